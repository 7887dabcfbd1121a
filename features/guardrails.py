"""Business rules applied after ranking, and the reason shown with each recommendation.

Each task declares its guardrail rules (:mod:`features.rules`) and whether category
diversity applies (:mod:`features.tasks`); :func:`apply_guardrails` composes them, enforces
diversity where it belongs and cuts each query to its ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.arrays import rank_within
from features.batch import QueryBatch
from features.matrix import FeatureMatrix
from features.rules import all_of
from features.snapshot import FeatureSnapshot
from features.sources import NO_PRODUCT_REASON, SOURCES
from features.tasks import get_task


def allowed(batch: QueryBatch, snapshot: FeatureSnapshot, fm: FeatureMatrix) -> np.ndarray:
    """Rows that pass every guardrail rule of the batch's task."""
    return all_of(get_task(batch.task).guardrails, batch, snapshot, fm.query, fm.product)


@dataclass(frozen=True)
class Selection:
    """Recommended rows of a feature matrix, ordered by query then rank."""

    rows: np.ndarray
    rank: np.ndarray


def apply_guardrails(
    batch: QueryBatch,
    snapshot: FeatureSnapshot,
    fm: FeatureMatrix,
    score: np.ndarray,
    k: np.ndarray,
) -> Selection:
    """Filter by the task's rules, cap items per category where the task is diverse, cut to
    ``k``.

    Args:
        batch: The queries.
        snapshot: The snapshot the features came from.
        fm: Candidates and features.
        score: Score per row (higher is better).
        k: Items wanted per query.
    """
    ok = np.flatnonzero(allowed(batch, snapshot, fm))
    q = fm.query[ok]
    sc = score[ok].astype(np.float64)
    if get_task(batch.task).diverse:
        cat = snapshot.products.category[fm.product[ok]].astype(np.int64)
        n_cat = max(len(snapshot.category_levels), 1)
        diverse = rank_within(q * n_cat + cat, sc) <= snapshot.config.max_per_category
        ok, q, sc = ok[diverse], q[diverse], sc[diverse]
    r = rank_within(q, sc)
    keep = r <= k[q]
    rows, rank = ok[keep], r[keep]
    order = np.lexsort((rank, fm.query[rows]))
    return Selection(rows[order], rank[order].astype(np.int64))


def reasons(
    batch: QueryBatch, snapshot: FeatureSnapshot, fm: FeatureMatrix, rows: np.ndarray
) -> list[str]:
    """A short reason per selected row, from its best source and strongest context product."""
    out = []
    for r in rows.tolist():
        source = SOURCES[fm.sources[int(fm.best_source[r])]] if fm.sources else None
        rp = int(fm.reason_product[r])
        anchor = int(batch.anchor[fm.query[r]])
        if source is None or (source.names_product and rp < 0):
            out.append(NO_PRODUCT_REASON)
            continue
        out.append(
            source.reason.format(
                product=snapshot.product_ids[rp] if rp >= 0 else "",
                anchor=snapshot.product_ids[anchor] if anchor >= 0 else "this product",
                category=snapshot.category_levels[int(snapshot.products.category[fm.product[r]])],
            )
        )
    return out

"""The one collector that runs a task's candidate sources and merges them.

Sources are declared in :mod:`features.sources`; eligibility rules and the candidate budget
belong to the task (:mod:`features.tasks`). The collector runs every source of the batch's
task, filters eligibility, keeps each source's top ``per_source`` and merges them by a learned
priority over the sources' ranks (:func:`merge_priority`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.arrays import rank_within, top_within, unique_inverse, within_reach
from features.batch import QueryBatch
from features.rules import all_of
from features.snapshot import FeatureSnapshot
from features.sources import CandidateSet, sources_for
from features.tasks import get_task

CANDIDATE_COLUMNS = ("query_id", "product_id", "source", "source_score")


@dataclass(frozen=True)
class Candidates:
    """Merged candidates of a batch, one row per (query, product), sorted by query then priority.

    Attributes:
        query: Query position per row.
        product: Product position per row.
        scores: ``(rows, n_sources)`` source scores, NaN where the source did not propose it.
        ranks: ``(rows, n_sources)`` 1-based rank inside the source, NaN where absent.
        sources: Source names, the columns of ``scores`` and ``ranks``.
        priority: :func:`merge_priority` of each row when the merge computed it (the feature
            of the same name reuses it); None: computed from ``ranks`` when needed.
    """

    query: np.ndarray
    product: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    sources: tuple[str, ...]
    priority: np.ndarray | None = None

    def merge_priority(self, weights: dict[str, tuple[float, ...]]) -> np.ndarray:
        """:func:`merge_priority` of every row (the merge's own values when it kept them: a
        row's priority depends on that row's ranks alone)."""
        if self.priority is not None:
            return self.priority
        return merge_priority(self.ranks, self.sources, weights)

    def __len__(self) -> int:
        return len(self.query)


def check_point_in_time(batch: QueryBatch, snapshot: FeatureSnapshot) -> None:
    """Refuse queries that are earlier than the snapshot's cut-off (they would see the future).

    Raises:
        ValueError: Some query's ``as_of`` is before the snapshot's cut-off.
    """
    early = batch.as_of < snapshot.as_of - 1e-9
    if early.any():
        first = batch.query_ids[np.flatnonzero(early)[:5]].tolist()
        raise ValueError(
            f"queries {first} have as_of before the snapshot cut-off {snapshot.as_of_timestamp}: "
            "features would see data after the query time"
        )


def candidate_sets(batch: QueryBatch, snapshot: FeatureSnapshot) -> list[CandidateSet]:
    """Every source of the batch's task, before eligibility filters and truncation."""
    check_point_in_time(batch, snapshot)
    get_task(batch.task)  # a clear error for an unknown task
    return [src.build(batch, snapshot) for src in sources_for(batch.task)]


def eligible(
    batch: QueryBatch, snapshot: FeatureSnapshot, query: np.ndarray, product: np.ndarray
) -> np.ndarray:
    """Which (query, product) pairs are allowed candidates: the task's eligibility rules."""
    return all_of(get_task(batch.task).eligibility, batch, snapshot, query, product)


RANK_BANDS = 8  # rank bands of the learned merge: 1, 2-3, 4-7, ..., 128 and beyond


def rank_band(ranks: np.ndarray) -> np.ndarray:
    """The merge's band of each 1-based rank: ``floor(log2(rank))``, capped at the last band."""
    return np.minimum(np.floor(np.log2(np.maximum(ranks, 1.0))), RANK_BANDS - 1).astype(np.int64)


def merge_priority(
    ranks: np.ndarray, sources: tuple[str, ...], weights: dict[str, tuple[float, ...]]
) -> np.ndarray:
    """Priority of each merged row (higher first) from its ``(rows, sources)`` ranks.

    With ``weights`` (source -> learned log-odds per :func:`rank_band`, see
    :func:`features.pipeline.calibrate_merge_weights`) the priority is the sum over the sources
    that propose the row of their band's weight: a product two good sources agree on beats one
    that a single source ranks a little higher. Without weights it is minus the best rank in
    any source (plain best-rank merge).
    """
    if len(ranks) == 0:
        return np.zeros(0)
    if not weights:
        # every merged row has a rank in some source: the minimum ignoring NaN is never NaN
        return -np.fmin.reduce(ranks, axis=1)
    table, columns = _weights_for(weights, sources)
    present = ~np.isnan(ranks)
    bands = rank_band(np.where(present, ranks, 1.0))
    contrib = table[columns, bands]
    return np.where(present, contrib, 0.0).sum(axis=1)


# (id(weights), sources) -> (weights, table, column index row): the table of a configuration's
# weights found without hashing them on every call (the entry holds ``weights``, so its id
# cannot be reused while the entry exists).
_TABLES: dict[tuple[int, tuple[str, ...]], tuple[object, np.ndarray, np.ndarray]] = {}


def _weights_for(
    weights: dict[str, tuple[float, ...]], sources: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_weight_table` of ``weights`` and the ``(1, sources)`` column index to gather it
    with, built once per weights object and sources."""
    key = (id(weights), sources)
    hit = _TABLES.get(key)
    if hit is None or hit[0] is not weights:
        if len(_TABLES) >= 64:
            _TABLES.clear()
        table = _weight_table(weights, sources)
        hit = (weights, table, np.arange(len(sources))[None, :])
        _TABLES[key] = hit
    return hit[1], hit[2]


def _weight_table(weights: dict[str, tuple[float, ...]], sources: tuple[str, ...]) -> np.ndarray:
    """``(sources, RANK_BANDS)`` weights (a source without weights gets zeros: it only breaks
    ties); cached by :func:`_weights_for`."""
    table = np.zeros((len(sources), RANK_BANDS))
    for i, src in enumerate(sources):
        w = np.asarray(weights.get(src, ()), dtype=np.float64)[:RANK_BANDS]
        table[i, : len(w)] = w
        if 0 < len(w) < RANK_BANDS:
            table[i, len(w) :] = w[-1]
    table.setflags(write=False)
    return table


def collect_candidates(batch: QueryBatch, snapshot: FeatureSnapshot) -> Candidates:
    """Run every source of the batch's task and merge them (:func:`merge_candidates`) with the
    configured ``per_source`` and the task's budget (``FeatureConfig.<task>_candidates``)."""
    cfg = snapshot.config
    return merge_candidates(
        batch,
        snapshot,
        candidate_sets(batch, snapshot),
        per_source=cfg.per_source,
        budget=cfg.candidates_for(batch.task),
    )


def merge_candidates(
    batch: QueryBatch,
    snapshot: FeatureSnapshot,
    sets: list[CandidateSet],
    *,
    per_source: int,
    budget: int,
) -> Candidates:
    """Filter eligibility, keep each source's top ``per_source``, merge, keep ``budget`` per query.

    The merged list per query is ordered by :func:`merge_priority` (the learned
    ``merge_weights`` of the configuration; plain best rank without them), then number of
    sources, then product position.
    """
    sources = tuple(cs.source for cs in sets)
    q, p, v, k = _eligible_in_reach(batch, snapshot, sets, per_source)
    group = k * len(batch) + q
    top, r = top_within(group, v, per_source)
    q, p, v, k = q[top], p[top], v[top], k[top]
    key = q * snapshot.n_products + p
    uniq, inv = unique_inverse(key)
    scores = np.full((len(uniq), len(sources)), np.nan)
    ranks = np.full((len(uniq), len(sources)), np.nan)
    scores[inv, k] = v
    ranks[inv, k] = r
    uq = uniq // snapshot.n_products
    up = uniq % snapshot.n_products
    priority = merge_priority(ranks, sources, snapshot.config.merge_weights)
    n_src = np.sum(~np.isnan(ranks), axis=1)
    order = np.lexsort((up, -n_src, -priority, uq))
    uq, up, scores, ranks = uq[order], up[order], scores[order], ranks[order]
    pos = rank_within(uq, -np.arange(len(uq), dtype=np.float64))
    keep = pos <= budget
    return Candidates(uq[keep], up[keep], scores[keep], ranks[keep], sources, priority[order][keep])


REACH = 4  # eligibility is checked on each source's top REACH * per_source first


def _eligible_in_reach(
    batch: QueryBatch, snapshot: FeatureSnapshot, sets: list[CandidateSet], per_source: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The eligible rows of ``sets`` that can reach their (source, query) group's top
    ``per_source``, in the sets' order: query, product, score and source index per row.

    The rules run on each group's top ``REACH * per_source`` scores
    (:func:`features.arrays.within_reach`) and on the rest of a group only where fewer than
    ``per_source`` of those pass, so every group's top ``per_source`` eligible rows are those of
    all its rows, at a fraction of the rule lookups (some sources propose thousands per query).
    """
    reach = [within_reach(cs.query, cs.score, REACH * per_source) for cs in sets]
    index = [i for i, _ in reach]
    passed = _eligible_rows(batch, snapshot, sets, index)
    rest = []
    for cs, (i, cut), ok in zip(sets, reach, _split(passed, index), strict=True):
        kept = np.sort(cs.query[i][ok])
        found = np.searchsorted(kept, cut, "right") - np.searchsorted(kept, cut, "left")
        short = cut[found < per_source]
        rest.append(np.setdiff1d(np.flatnonzero(np.isin(cs.query, short)), i, assume_unique=True))
    more_passed = _eligible_rows(batch, snapshot, sets, rest)
    out = [
        np.sort(np.concatenate([i[ok], j[ok_j]])) if len(j) else i[ok]
        for i, ok, j, ok_j in zip(
            index, _split(passed, index), rest, _split(more_passed, rest), strict=True
        )
    ]
    k = np.repeat(np.arange(len(sets), dtype=np.int64), [len(r) for r in out])
    return (
        _gather(sets, out, "query"),
        _gather(sets, out, "product"),
        _gather(sets, out, "score"),
        k,
    )


def _gather(sets: list[CandidateSet], rows: list[np.ndarray], field: str) -> np.ndarray:
    """``field`` of the ``rows`` of each set, set after set."""
    if not sets:
        return np.zeros(0, dtype=np.float64 if field == "score" else np.int64)
    return np.concatenate([getattr(cs, field)[r] for cs, r in zip(sets, rows, strict=True)])


def _eligible_rows(
    batch: QueryBatch, snapshot: FeatureSnapshot, sets: list[CandidateSet], rows: list[np.ndarray]
) -> np.ndarray:
    """One eligibility mask over the ``rows`` (positions per set) of every set, set after set."""
    if not sets or sum(len(r) for r in rows) == 0:
        return np.zeros(0, dtype=bool)
    return eligible(batch, snapshot, _gather(sets, rows, "query"), _gather(sets, rows, "product"))


def _split(mask: np.ndarray, rows: list[np.ndarray]) -> list[np.ndarray]:
    """``mask`` over the concatenated ``rows`` cut back into one piece per entry of ``rows``."""
    if len(mask) == 0:
        return [np.zeros(len(r), dtype=bool) for r in rows]
    return np.split(mask, np.cumsum([len(r) for r in rows])[:-1])


def candidates_for_products(
    batch: QueryBatch, snapshot: FeatureSnapshot, query: np.ndarray, product: np.ndarray
) -> Candidates:
    """Caller-chosen ``(query, product)`` pairs as candidates (re-ranking a given list).

    Each pair keeps the source scores and ranks that :func:`collect_candidates` gives it; a
    product no source proposes for that query (or beyond a source's ``per_source`` cut) has NaN
    in every source column. No eligibility filter is applied: the caller owns the list.

    Args:
        batch: The queries.
        snapshot: The snapshot of the batch.
        query: Query position per pair.
        product: Product position per pair (known products only).

    Returns:
        The pairs, grouped by query in their given order within a query.
    """
    collected = collect_candidates(batch, snapshot)
    order = np.argsort(query, kind="stable")
    query, product = query[order].astype(np.int64), product[order].astype(np.int64)
    n_sources = len(collected.sources)
    scores = np.full((len(query), n_sources), np.nan)
    ranks = np.full((len(query), n_sources), np.nan)
    have = collected.query * snapshot.n_products + collected.product
    want = query * snapshot.n_products + product
    by_key = np.argsort(have, kind="stable")
    pos = np.minimum(np.searchsorted(have[by_key], want), max(len(have) - 1, 0))
    found = np.flatnonzero(have[by_key][pos] == want) if len(have) else np.zeros(0, dtype=int)
    scores[found] = collected.scores[by_key[pos[found]]]
    ranks[found] = collected.ranks[by_key[pos[found]]]
    return Candidates(query, product, scores, ranks, collected.sources)

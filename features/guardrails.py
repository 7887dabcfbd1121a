"""Business rules applied after ranking, and the reason shown with each recommendation.

Each rule is a function returning a boolean mask over candidate rows (True = allowed);
:func:`apply_guardrails` composes them, enforces diversity and cuts each query to its ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.arrays import PairLookup, indicator, rank_within
from features.batch import QueryBatch
from features.data import schema as s
from features.matrix import FeatureMatrix
from features.snapshot import FeatureSnapshot

REASONS = {
    "repeat": "you buy this regularly",
    "cooc": "bought together with {product}",
    "sequential": "often bought after {product}",
    "coview": "viewed together with {product}",
    "cocart": "added to carts with {product}",
    "category_assoc": "{category} goes well with your basket",
    "segment_popular": "popular with customers like you",
    "trending": "trending now",
    "family_popular": "a popular upgrade of {anchor}",
    "family_next_tier": "the next step up from {anchor}",
    "price_level_fit": "matches the quality you usually choose",
    "viewed_version": "you looked at this version",
    "viewed_then_bought": "customers like you upgraded to this",
}


def not_in_context(batch: QueryBatch, snapshot: FeatureSnapshot, fm: FeatureMatrix) -> np.ndarray:
    """Products in the cart or the anchor itself are never recommended."""
    if len(batch) == 1:
        return ~np.isin(fm.product, batch.context)
    ctx = PairLookup(
        indicator(batch.context_query, batch.context, (len(batch), snapshot.n_products))
    )
    return ctx.get(fm.query, fm.product) == 0


def in_stock(batch: QueryBatch, snapshot: FeatureSnapshot, fm: FeatureMatrix) -> np.ndarray:
    """Out-of-stock products never appear."""
    return snapshot.arrays["in_stock"][fm.product]


def not_owned_durable(
    batch: QueryBatch, snapshot: FeatureSnapshot, fm: FeatureMatrix
) -> np.ndarray:
    """Durable products the customer already owns are suppressed (consumables are fine)."""
    owned = snapshot.lookups["owned"].get(batch.customer[fm.query], fm.product) > 0
    return ~owned | snapshot.arrays["is_consumable"][fm.product]


def within_price_caps(
    batch: QueryBatch, snapshot: FeatureSnapshot, fm: FeatureMatrix
) -> np.ndarray:
    """Upsell: pricier than the anchor by at most the uplift cap. Cross-sell: at most
    ``cross_sell_price_cap`` times the context (cart or anchor) value."""
    cfg = snapshot.config
    price = snapshot.arrays["price"][fm.product]
    if batch.task == s.UPSELL:
        anchor = batch.anchor[fm.query]
        ap = np.where(anchor >= 0, snapshot.arrays["price"][np.maximum(anchor, 0)], np.nan)
        with np.errstate(invalid="ignore"):
            return (price > ap) & (price <= ap * (1 + cfg.upsell_max_uplift) + 1e-9)
    cart_value = batch.context_value(snapshot.arrays["price"])[fm.query]
    return (cart_value <= 0) | (price <= cfg.cross_sell_price_cap * cart_value + 1e-9)


RULES = (not_in_context, in_stock, not_owned_durable, within_price_caps)


def allowed(batch: QueryBatch, snapshot: FeatureSnapshot, fm: FeatureMatrix) -> np.ndarray:
    """Rows that pass every rule of :data:`RULES`."""
    ok = np.ones(len(fm), dtype=bool)
    for rule in RULES:
        ok &= rule(batch, snapshot, fm)
    return ok


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
    """Filter by every rule, keep at most ``max_per_category`` per category, cut to ``k``.

    Args:
        batch: The queries.
        snapshot: The snapshot the features came from.
        fm: Candidates and features.
        score: Model score per row (higher is better).
        k: Items wanted per query.
    """
    ok = np.flatnonzero(allowed(batch, snapshot, fm))
    q = fm.query[ok]
    sc = score[ok].astype(np.float64)
    cat = snapshot.arrays["category"][fm.product[ok]].astype(np.int64)
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
        source = fm.sources[int(fm.best_source[r])]
        rp = int(fm.reason_product[r])
        anchor = int(batch.anchor[fm.query[r]])
        if source in ("cooc", "sequential", "coview", "cocart") and rp < 0:
            source = "segment_popular"
        template = REASONS[source]
        out.append(
            template.format(
                product=snapshot.product_ids[rp] if rp >= 0 else "",
                anchor=snapshot.product_ids[anchor] if anchor >= 0 else "this product",
                category=snapshot.category_levels[int(snapshot.arrays["category"][fm.product[r]])],
            )
        )
    return out

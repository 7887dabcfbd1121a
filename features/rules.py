"""Boolean rules over (query, product) pairs: candidate eligibility and guardrails use them.

Every rule has the signature ``rule(batch, snapshot, query, product) -> mask`` (True = allowed)
over aligned arrays of query and product positions. Each task declares which rules filter its
candidates and which guard its final lists (``features/tasks/``); the rules themselves are
written once, here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from features.arrays import PairLookup, indicator, is_member
from features.batch import QueryBatch
from features.snapshot import FeatureSnapshot

Rule = Callable[[QueryBatch, FeatureSnapshot, np.ndarray, np.ndarray], np.ndarray]


def _in_context(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    if len(batch) == 1:
        return is_member(p, batch.context)
    ctx = PairLookup(
        indicator(batch.context_query, batch.context, (len(batch), snapshot.n_products))
    )
    return ctx.get(q, p) > 0


def not_in_context(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Products in the cart or the anchor itself are never recommended."""
    return ~_in_context(batch, snapshot, q, p)


def in_stock(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Out-of-stock products never appear."""
    return snapshot.products.in_stock[p]


def bought_before(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """The customer bought the product before: in the snapshot's history (returns included)
    or live, after it (:mod:`features.live`)."""
    bought = snapshot.history.bought.get(batch.customer[q], p) > 0
    if batch.live:
        bought |= batch.live_count("bought", q, p) > 0
    return bought


def not_just_bought(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Replenish: a product bought after the snapshot (live) is not due again yet."""
    if not batch.live:
        return np.ones(len(q), dtype=bool)
    return batch.live_count("bought", q, p) == 0


def new_to_customer(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Cross-sell: never bought by the customer before (what they rebuy is replenish's job)."""
    return ~bought_before(batch, snapshot, q, p)


def consumable(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Consumable products (labelled, or inferred from repurchases on unlabelled shops)."""
    return snapshot.products.is_consumable[p]


def bought_consumable(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Replenish: a consumable the customer bought before."""
    return bought_before(batch, snapshot, q, p) & consumable(batch, snapshot, q, p)


def not_owned_durable(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Durable products the customer owns are suppressed (consumables are fine)."""
    owned = snapshot.history.owned.get(batch.customer[q], p) > 0
    if batch.live:
        owned |= batch.live_count("bought", q, p) > 0
    return ~owned | snapshot.products.is_consumable[p]


def outside_context_families(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Cross-sell: a complement comes from another family than every context product."""
    fam = snapshot.products.family
    if len(batch.context) == 0:
        return np.ones(len(q), dtype=bool)
    if len(batch) == 1:
        return ~is_member(fam[p], fam[batch.context])
    ctx_fam = PairLookup(
        indicator(
            batch.context_query, fam[batch.context], (len(batch), len(snapshot.family_levels))
        )
    )
    return ctx_fam.get(q, fam[p]) == 0


def within_uplift_cap(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Upsell: pricier than the anchor by at most ``upsell_max_uplift``."""
    price = snapshot.products.price
    anchor = batch.anchor[q]
    ap = np.where(anchor >= 0, price[np.maximum(anchor, 0)], np.nan)
    with np.errstate(invalid="ignore"):
        return (price[p] > ap) & (price[p] <= ap * (1 + snapshot.config.upsell_max_uplift) + 1e-9)


def within_cart_price_cap(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Cross-sell: at most ``cross_sell_price_cap`` times the context (cart or anchor) value."""
    price = snapshot.products.price
    cart_value = batch.context_value(price)[q]
    return (cart_value <= 0) | (
        price[p] <= snapshot.config.cross_sell_price_cap * cart_value + 1e-9
    )


def all_of(
    rules: tuple[Rule, ...],
    batch: QueryBatch,
    snapshot: FeatureSnapshot,
    q: np.ndarray,
    p: np.ndarray,
) -> np.ndarray:
    """Pairs that pass every rule of ``rules`` (each rule sees only the pairs that passed the
    ones before it)."""
    ok = np.ones(len(q), dtype=bool)
    left = np.arange(len(q))
    for rule in rules:
        if len(left) == 0:
            break
        passed = rule(batch, snapshot, q[left], p[left])
        ok[left[~passed]] = False
        left = left[passed]
    return ok

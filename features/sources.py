"""Candidate sources, each declared once by name: builder, reason template, tasks.

Every source returns a :class:`CandidateSet`: the contract ``(query_id, product_id, source,
source_score)`` held as aligned arrays (``to_frame`` gives the table). Builders read only the
snapshot (data before its cut-off) and the query's own context; the same builder serves a
batch of thousands of training queries and the one-query serving path (the one-query case of a
sparse product is :func:`features.arrays.row_combination`, bit-identical to SciPy's).

To add a source: write its builder here (or in a module imported below) and call
:func:`register_source` once. Features (``src_<name>_score`` / ``_rank``), the collector,
candidate recall, per-source baselines and reasons all iterate over the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.arrays import (
    PairLookup,
    gather_rows,
    indicator,
    rank_within,
    row_combination,
)
from features.batch import QueryBatch
from features.data import schema as s
from features.latent import top_by_vector
from features.registry import Registry
from features.snapshot import FeatureSnapshot


@dataclass(frozen=True)
class CandidateSet:
    """One source's candidates: aligned arrays of query position, product position, score."""

    source: str
    query: np.ndarray
    product: np.ndarray
    score: np.ndarray

    def to_frame(self, batch: QueryBatch, snapshot: FeatureSnapshot) -> pd.DataFrame:
        """The contract table ``(query_id, product_id, source, source_score)``."""
        return pd.DataFrame(
            {
                "query_id": batch.query_ids[self.query],
                "product_id": snapshot.product_ids[self.product],
                "source": self.source,
                "source_score": self.score,
            }
        )


Builder = Callable[[QueryBatch, FeatureSnapshot], CandidateSet]


@dataclass(frozen=True)
class Source:
    """A candidate source.

    Attributes:
        name: Unique name (feature columns ``src_<name>_score`` and ``src_<name>_rank``).
        tasks: Tasks whose candidates it proposes.
        build: ``build(batch, snapshot) -> CandidateSet``.
        reason: Reason template; may use ``{product}`` (the context product behind the
            strongest co-occurrence), ``{anchor}`` and ``{category}``.
        names_product: The reason names a context product; without one the generic
            :data:`NO_PRODUCT_REASON` is shown.
    """

    name: str
    tasks: frozenset[str]
    build: Builder
    reason: str
    names_product: bool = False


NO_PRODUCT_REASON = "popular with customers like you"
SOURCES: Registry[Source] = Registry("candidate source")
register_source = SOURCES.register


def sources_for(task: str) -> tuple[Source, ...]:
    """The sources of ``task``, in registration order."""
    return tuple(src for src in SOURCES.values() if task in src.tasks)


def source_names(task: str) -> tuple[str, ...]:
    """Names of the sources of ``task``, in registration order."""
    return tuple(src.name for src in sources_for(task))


# --------------------------------------------------------------------------- shared helpers


def _triples(scores: sp.spmatrix, source: str) -> CandidateSet:
    c = scores if isinstance(scores, sp.csr_matrix) else sp.csr_matrix(scores)
    c.sort_indices()  # rows in order, products ascending inside each: (query, product) order
    rows = np.repeat(np.arange(c.shape[0], dtype=np.int64), np.diff(c.indptr))
    keep = c.data > 0
    return CandidateSet(source, rows[keep], c.indices[keep].astype(np.int64), c.data[keep])


def _one_row(source: str, cols: np.ndarray, vals: np.ndarray) -> CandidateSet:
    keep = vals > 0
    return CandidateSet(source, np.zeros(int(keep.sum()), dtype=np.int64), cols[keep], vals[keep])


def via_product_table(
    batch: QueryBatch, snapshot: FeatureSnapshot, table: PairLookup, name: str
) -> CandidateSet:
    """Products scored by the summed ``table`` rows of the query's context products."""
    if len(batch) == 1:
        cols, vals = row_combination(table.matrix, batch.distinct_context)
        return _one_row(name, cols, vals)
    ctx = indicator(batch.context_query, batch.context, (len(batch), snapshot.n_products))
    return _triples(ctx @ table.matrix, name)


def customer_rows(batch: QueryBatch, table: PairLookup) -> tuple[np.ndarray, ...]:
    """Every stored entry of each query's customer row: ``(query, product, value)``.

    The same code for one query and many (no sparse product, so no ordering subtleties).
    """
    known = np.flatnonzero(batch.customer >= 0)
    return gather_rows(table.matrix, batch.customer[known], known)


def _positive(name: str, q: np.ndarray, p: np.ndarray, score: np.ndarray) -> CandidateSet:
    ok = np.isfinite(score) & (score > 0)
    return CandidateSet(name, q[ok], p[ok], score[ok])


# --------------------------------------------------------------------------- cross-sell


def candidates_from_cooc(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products bought in the same orders as the context, scored by summed shrunk lift."""
    return via_product_table(batch, snapshot, snapshot.pairs.cooc, "cooc")


def candidates_from_cooc_conf(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products bought in the same orders as the context, by summed ``P(b | a)`` over the
    context (the "frequently bought together" heuristic, on the lift-pruned neighbours)."""
    return via_product_table(batch, snapshot, snapshot.pairs.cooc_conf, "cooc_conf")


def candidates_from_sequential(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products bought in the next order after the context products, by summed lift."""
    return via_product_table(batch, snapshot, snapshot.pairs.sequential, "sequential")


def candidates_from_coview(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products viewed in the same sessions as the context (empty without events)."""
    return via_product_table(batch, snapshot, snapshot.pairs.coview, "coview")


def candidates_from_cocart(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products added to cart in the same sessions as the context (empty without events)."""
    return via_product_table(batch, snapshot, snapshot.pairs.cocart, "cocart")


def _via_group_tables(
    batch: QueryBatch,
    snapshot: FeatureSnapshot,
    group: np.ndarray,
    tables: tuple[PairLookup, PairLookup],
    name: str,
) -> CandidateSet:
    """``(context groups) @ assoc @ top``: the group weights first (summed association per
    group), then the groups' top lists combined with those weights, one query and many alike."""
    assoc, top = tables[0].matrix, tables[1].matrix
    if len(batch) == 1:
        # the indicator row's stored order is its sorted distinct groups: the same sums
        groups = group[batch.context]
        wc, wv = row_combination(assoc, np.unique(groups[groups >= 0]))
        return _one_row(name, *row_combination(top, wc, wv))
    n_groups = assoc.shape[0]
    xc = indicator(batch.context_query, group[batch.context], (len(batch), n_groups))
    weights = sp.csr_matrix(xc @ assoc)
    weights.sort_indices()
    return _triples(weights @ top, name)


def candidates_from_category_assoc(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Top products of the categories most associated with the context's categories."""
    pairs = snapshot.pairs
    return _via_group_tables(
        batch,
        snapshot,
        snapshot.products.category,
        (pairs.category_assoc, pairs.category_top),
        "category_assoc",
    )


def candidates_from_family_assoc(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Family-level complements: the families most associated with the context's families,
    then their best sellers, scaled by fit with the customer's price level
    (``0.5 + 0.5 * (1 - |price percentile - level|)``; unscaled for unknown customers)."""
    pairs = snapshot.pairs
    cs = _via_group_tables(
        batch,
        snapshot,
        snapshot.products.family,
        (pairs.family_assoc, pairs.family_top),
        "family_assoc",
    )
    cust = batch.customer[cs.query]
    level = np.where(cust >= 0, snapshot.customers.price_level[np.maximum(cust, 0)], np.nan)
    fit = 1.0 - np.abs(snapshot.products.price_pct_in_category[cs.product] - level)
    scale = np.where(np.isnan(fit), 1.0, 0.5 + 0.5 * fit)
    return CandidateSet(cs.source, cs.query, cs.product, cs.score * scale)


def candidates_from_segment_popular(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Most popular products of the customer's persona segment (global for unknown customers)."""
    seg = snapshot.segment_of(batch.customer)
    top = snapshot.top.global_top
    pop = snapshot.products.long_popularity
    seg_table = snapshot.top.segment_top.matrix
    known = np.flatnonzero(seg >= 0)
    kq, kp, kv = gather_rows(seg_table, seg[known], known)
    unknown = np.flatnonzero(seg < 0)
    q = np.concatenate([kq, np.repeat(unknown, len(top))]).astype(np.int64)
    p = np.concatenate([kp, np.tile(top, len(unknown))]).astype(np.int64)
    v = np.concatenate([kv, np.tile(pop[top], len(unknown))])
    order = np.lexsort((p, q))
    return _positive("segment_popular", q[order], p[order], v[order])


def candidates_from_trending(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products whose share of recent order lines is rising, the same list for every query."""
    top, score = snapshot.top.trending_top, snapshot.top.trending_score
    n = len(batch)
    return CandidateSet(
        "trending",
        np.repeat(np.arange(n, dtype=np.int64), len(top)),
        np.tile(top, n),
        np.tile(score, n),
    )


def _unit_rows(m: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return np.where(norm > 0, m / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def candidates_from_latent_context(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products whose item vector is closest (cosine) to the summed vectors of the context."""
    lf = snapshot.latent
    vec = np.zeros((len(batch), lf.item.shape[1]), dtype=np.float32)
    np.add.at(vec, batch.context_query, lf.item[batch.context])
    q, p, v = top_by_vector(lf.active_items, lf.active, _unit_rows(vec), snapshot.config.per_source)
    return CandidateSet("latent_context", q, p, v)


def _customer_vectors(batch: QueryBatch, snapshot: FeatureSnapshot) -> np.ndarray:
    lf = snapshot.latent
    vec = np.zeros((len(batch), lf.customer.shape[1]), dtype=np.float32)
    known = batch.customer >= 0
    vec[known] = lf.customer[batch.customer[known]]
    return vec


def candidates_from_latent_customer(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products whose item vector is closest to the customer's vector (their history)."""
    lf = snapshot.latent
    vec = _customer_vectors(batch, snapshot)
    q, p, v = top_by_vector(lf.active_items, lf.active, vec, snapshot.config.per_source)
    return CandidateSet("latent_customer", q, p, v)


def candidates_from_neighbours(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """What the customer's nearest customers bought, weighted by similarity.

    Neighbours: the ``neighbours`` most similar customers of the pool (cosine of customer
    vectors, the customer excluded); score: ``sum_j sim_j * frequency[j, product]``.
    """
    lf, cfg = snapshot.latent, snapshot.config
    vec = _customer_vectors(batch, snapshot)
    q, nb, sim = top_by_vector(lf.pool_customers, lf.pool, vec, cfg.neighbours + 1)
    not_self = nb != batch.customer[q]
    q, nb, sim = q[not_self], nb[not_self], sim[not_self]
    keep = rank_within(q, -np.arange(len(q), dtype=np.float64)) <= cfg.neighbours
    q, nb, sim = q[keep], nb[keep], sim[keep]
    frequency = snapshot.history.frequency.matrix
    if len(batch) == 1:
        # the weight row's stored order is its sorted neighbours: the sums of the product below
        order = np.argsort(nb, kind="stable")
        return _one_row("neighbours", *row_combination(frequency, nb[order], sim[order]))
    weights = sp.csr_matrix((sim, (q, nb)), shape=(len(batch), frequency.shape[0]))
    weights.sort_indices()
    return _triples(weights @ frequency, "neighbours")


# --------------------------------------------------------------------------- upsell


def upsell_universe(batch: QueryBatch, snapshot: FeatureSnapshot) -> tuple[np.ndarray, ...]:
    """Every (query, version) pair inside the anchor's family, pricier and within the cap.

    Returns:
        ``(query, product, 1 + popularity share)`` sorted by query then product.
    """
    has = np.flatnonzero(batch.anchor >= 0)
    q, p, v = gather_rows(snapshot.pairs.upsell_pairs.matrix, batch.anchor[has], has)
    order = np.lexsort((p, q))
    return q[order], p[order], v[order]


UpsellScore = Callable[
    [QueryBatch, FeatureSnapshot, np.ndarray, np.ndarray, np.ndarray], np.ndarray
]


def _upsell_scored(name: str, score: UpsellScore) -> Builder:
    def build(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
        q, p, pop = upsell_universe(batch, snapshot)
        return _positive(name, q, p, score(batch, snapshot, q, p, pop))

    build.__doc__ = f"Upsell universe scored by {score.__name__}."
    return build


def _family_popularity(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray, pop: np.ndarray
) -> np.ndarray:
    return pop


def _closest_price_step(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray, pop: np.ndarray
) -> np.ndarray:
    price = snapshot.products.price
    return price[batch.anchor[q]] / price[p]


def _price_level_fit(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray, pop: np.ndarray
) -> np.ndarray:
    cust = batch.customer[q]
    level = np.where(cust >= 0, snapshot.customers.price_level[np.maximum(cust, 0)], np.nan)
    return 1.0 - np.abs(snapshot.products.price_pct_in_category[p] - level)


def _viewed_or_carted(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray, pop: np.ndarray
) -> np.ndarray:
    cust = batch.customer[q]
    browse = snapshot.browsing
    return (
        browse.views_30.get(cust, p)
        + browse.carts_30.get(cust, p)
        + batch.live_count("viewed", q, p)
        + batch.live_count("carted", q, p)
    )


def _viewed_then_bought(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, p: np.ndarray, pop: np.ndarray
) -> np.ndarray:
    return snapshot.pairs.viewed_bought.get(batch.anchor[q], p)


# --------------------------------------------------------------------------- replenish


def candidates_from_personal_frequency(
    batch: QueryBatch, snapshot: FeatureSnapshot
) -> CandidateSet:
    """The customer's own products by recency-weighted order count (half-life in config)."""
    q, p, v = customer_rows(batch, snapshot.history.frequency)
    return _positive("personal_frequency", q, p, v)


def candidates_from_repurchase_due(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """The customer's own products that are due: days since the last purchase against the
    customer's own interval for the product (2+ orders), else the product's typical cycle.

    Score ``min(r, 1 / r)`` with ``r = days since / interval``: 1 when exactly due.
    """
    q, p, last = customer_rows(batch, snapshot.history.last_bought)
    own = snapshot.history.interval.get(batch.customer[q], p)
    interval = np.where(own > 0, own, snapshot.products.cycle_days[p])
    since = np.maximum(batch.as_of[q] - last, 0.5)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = since / interval
        score = np.minimum(r, 1.0 / r)
    return _positive("repurchase_due", q, p, score)


def candidates_from_owned_with_cart(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products that go with the cart (order co-occurrence lift); the task's eligibility keeps
    only those the customer bought before."""
    return via_product_table(batch, snapshot, snapshot.pairs.cooc, "owned_with_cart")


# --------------------------------------------------------------------------- the registry

CS, UP, RE = s.CROSS_SELL, s.UPSELL, s.REPLENISH
for _source in (
    Source("cooc", frozenset({CS}), candidates_from_cooc, "bought together with {product}", True),
    Source(
        "cooc_conf",
        frozenset({CS}),
        candidates_from_cooc_conf,
        "often bought with {product}",
        True,
    ),
    Source(
        "sequential",
        frozenset({CS}),
        candidates_from_sequential,
        "often bought after {product}",
        True,
    ),
    Source(
        "coview", frozenset({CS}), candidates_from_coview, "viewed together with {product}", True
    ),
    Source(
        "cocart", frozenset({CS}), candidates_from_cocart, "added to carts with {product}", True
    ),
    Source(
        "category_assoc",
        frozenset({CS}),
        candidates_from_category_assoc,
        "{category} goes well with your basket",
    ),
    Source(
        "family_assoc",
        frozenset({CS}),
        candidates_from_family_assoc,
        "completes what is in your basket",
    ),
    Source(
        "segment_popular",
        frozenset({CS}),
        candidates_from_segment_popular,
        "popular with customers like you",
    ),
    Source("trending", frozenset({CS}), candidates_from_trending, "trending now"),
    Source(
        "latent_context",
        frozenset({CS}),
        candidates_from_latent_context,
        "often chosen with what you are looking at",
    ),
    Source(
        "latent_customer",
        frozenset({CS}),
        candidates_from_latent_customer,
        "picked for your taste",
    ),
    Source(
        "neighbours",
        frozenset({CS}),
        candidates_from_neighbours,
        "customers who buy like you also bought this",
    ),
    Source(
        "family_popular",
        frozenset({UP}),
        _upsell_scored("family_popular", _family_popularity),
        "a popular upgrade of {anchor}",
    ),
    Source(
        "family_next_tier",
        frozenset({UP}),
        _upsell_scored("family_next_tier", _closest_price_step),
        "the next step up from {anchor}",
    ),
    Source(
        "price_level_fit",
        frozenset({UP}),
        _upsell_scored("price_level_fit", _price_level_fit),
        "matches the quality you usually choose",
    ),
    Source(
        "viewed_version",
        frozenset({UP}),
        _upsell_scored("viewed_version", _viewed_or_carted),
        "you looked at this version",
    ),
    Source(
        "viewed_then_bought",
        frozenset({UP}),
        _upsell_scored("viewed_then_bought", _viewed_then_bought),
        "customers like you upgraded to this",
    ),
    Source(
        "personal_frequency",
        frozenset({RE}),
        candidates_from_personal_frequency,
        "you buy this regularly",
    ),
    Source(
        "repurchase_due",
        frozenset({RE}),
        candidates_from_repurchase_due,
        "time to restock",
    ),
    Source(
        "owned_with_cart",
        frozenset({RE}),
        candidates_from_owned_with_cart,
        "you usually buy this with {product}",
        True,
    ),
):
    register_source(_source)

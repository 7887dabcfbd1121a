"""Candidate sources per task and the one collector that merges them.

Every source returns a :class:`CandidateSet`: the contract ``(query_id, product_id, source,
source_score)`` held as aligned arrays (``to_frame`` gives the table). Sources read only the
snapshot (data before its cut-off) and the query's own context.

cross_sell sources: ``repeat`` (the customer's own consumables, by how often bought), ``cooc`` (order co-occurrence, shrunk lift), ``sequential`` (bought A, then
B in the next order within N days), ``coview`` / ``cocart`` (session co-occurrence of views /
add-to-carts), ``category_assoc`` (category-level complement lift, then the category's top
products), ``segment_popular`` (popular in the customer's persona segment; global popularity for
unknown customers), ``trending`` (rising share of recent order lines).

upsell sources, all within the anchor's family, pricier than the anchor and at most
``upsell_max_uplift`` above it: ``family_popular``, ``family_next_tier`` (closest price step
first), ``price_level_fit`` (closest to the customer's own price level), ``viewed_version``
(versions the customer viewed or carted), ``viewed_then_bought`` ("viewed A, bought B").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.arrays import PairLookup, indicator, rank_within, row_combination
from features.batch import QueryBatch
from features.data import schema as s
from features.snapshot import FeatureSnapshot

CROSS_SELL_SOURCES = (
    "repeat",
    "cooc",
    "sequential",
    "coview",
    "cocart",
    "category_assoc",
    "segment_popular",
    "trending",
)
UPSELL_SOURCES = (
    "family_popular",
    "family_next_tier",
    "price_level_fit",
    "viewed_version",
    "viewed_then_bought",
)
SOURCES = {s.CROSS_SELL: CROSS_SELL_SOURCES, s.UPSELL: UPSELL_SOURCES}
CANDIDATE_COLUMNS = ("query_id", "product_id", "source", "source_score")


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


@dataclass(frozen=True)
class Candidates:
    """Merged candidates of a batch, one row per (query, product), sorted by query then priority.

    Attributes:
        query: Query position per row.
        product: Product position per row.
        scores: ``(rows, n_sources)`` source scores, NaN where the source did not propose it.
        ranks: ``(rows, n_sources)`` 1-based rank inside the source, NaN where absent.
        sources: Source names, the columns of ``scores`` and ``ranks``.
    """

    query: np.ndarray
    product: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    sources: tuple[str, ...]

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


def _context_matrix(batch: QueryBatch, snapshot: FeatureSnapshot) -> sp.csr_matrix:
    return indicator(batch.context_query, batch.context, (len(batch), snapshot.n_products))


def _triples(scores: sp.spmatrix, source: str) -> CandidateSet:
    c = scores if isinstance(scores, sp.csr_matrix) else sp.csr_matrix(scores)
    rows = np.repeat(np.arange(c.shape[0], dtype=np.int64), np.diff(c.indptr))
    keep = c.data > 0
    q, p, v = rows[keep], c.indices[keep].astype(np.int64), c.data[keep]
    order = np.lexsort((p, q))
    return CandidateSet(source, q[order], p[order], v[order])


# One-query batches (the serving path) skip SciPy's sparse products: a 1-row product is a sum
# of table rows (``row_combination``), accumulated in the order SciPy uses, so the candidates
# and scores are bit-identical to the batch path (tests/test_features.py checks batch == one).


def _one_row(source: str, cols: np.ndarray, vals: np.ndarray) -> CandidateSet:
    keep = vals > 0
    return CandidateSet(source, np.zeros(int(keep.sum()), dtype=np.int64), cols[keep], vals[keep])


def _via_product_table(batch: QueryBatch, snapshot: FeatureSnapshot, table: str) -> CandidateSet:
    """Products scored by the summed ``table`` rows of the query's context products."""
    if len(batch) == 1:
        cols, vals = row_combination(snapshot.matrices[table], np.unique(batch.context))
        return _one_row(table, cols, vals)
    return _triples(_context_matrix(batch, snapshot) @ snapshot.matrices[table], table)


def candidates_from_cooc(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products bought in the same orders as the context, scored by summed shrunk lift."""
    return _via_product_table(batch, snapshot, "cooc")


def candidates_from_repeat(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """The customer's own consumable products, scored by the quantity they bought."""
    known = np.flatnonzero(batch.customer >= 0)
    table = snapshot.matrices["owned_consumable"]
    if len(batch) == 1:
        return _one_row("repeat", *row_combination(table, batch.customer[known]))
    x = indicator(known, batch.customer[known], (len(batch), snapshot.n_customers))
    return _triples(x @ table, "repeat")


def candidates_from_sequential(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products bought in the next order after the context products, by summed lift."""
    return _via_product_table(batch, snapshot, "sequential")


def candidates_from_coview(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products viewed in the same sessions as the context (empty without events)."""
    return _via_product_table(batch, snapshot, "coview")


def candidates_from_cocart(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products added to cart in the same sessions as the context (empty without events)."""
    return _via_product_table(batch, snapshot, "cocart")


def candidates_from_category_assoc(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Top products of the categories most associated with the context's categories."""
    n_cat = len(snapshot.category_levels)
    cats = snapshot.arrays["category"][batch.context]
    assoc, top = snapshot.matrices["category_assoc"], snapshot.matrices["category_top"]
    if len(batch) == 1:
        # SciPy's product stores a row's columns in reverse order of first appearance; the
        # second product sums in that order.
        rows = np.unique(cats)
        starts, ends = assoc.indptr[rows], assoc.indptr[rows + 1]
        seen = np.concatenate(
            [assoc.indices[lo:hi] for lo, hi in zip(starts, ends, strict=True)] or [[]]
        ).astype(np.int64)
        cols, vals = row_combination(assoc, rows)
        _, first = np.unique(seen, return_index=True)
        stored = seen[np.sort(first)][::-1]
        weight = np.zeros(n_cat)
        weight[cols] = vals
        stored = stored[weight[stored] != 0]
        return _one_row("category_assoc", *row_combination(top, stored, weight[stored]))
    xc = indicator(batch.context_query, cats, (len(batch), n_cat))
    return _triples((xc @ assoc) @ top, "category_assoc")


def _segment_of(batch: QueryBatch, snapshot: FeatureSnapshot) -> np.ndarray:
    seg = np.full(len(batch), -1, dtype=np.int64)
    known = batch.customer >= 0
    seg[known] = snapshot.arrays["segment"][batch.customer[known]]
    return seg


def candidates_from_segment_popular(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Most popular products of the customer's persona segment (global for unknown customers)."""
    seg = _segment_of(batch, snapshot)
    n_seg = len(snapshot.segment_levels)
    top = snapshot.arrays["global_top"].astype(np.int64)
    pop = snapshot.arrays[f"pop_{max(snapshot.config.popularity_windows_days)}"]
    if len(batch) == 1:
        if seg[0] >= 0:
            return _one_row(
                "segment_popular", *row_combination(snapshot.matrices["segment_top"], seg)
            )
        order = np.argsort(top, kind="stable")
        return _one_row("segment_popular", top[order], pop[top][order])
    scores = (
        indicator(np.arange(len(batch)), seg, (len(batch), n_seg))
        @ snapshot.matrices["segment_top"]
    )
    unknown = np.flatnonzero(seg < 0)
    glob = sp.csr_matrix(
        (
            np.tile(pop[top], len(unknown)),
            (np.repeat(unknown, len(top)), np.tile(top, len(unknown))),
        ),
        shape=scores.shape,
    )
    return _triples(scores + glob, "segment_popular")


def candidates_from_trending(batch: QueryBatch, snapshot: FeatureSnapshot) -> CandidateSet:
    """Products whose share of recent order lines is rising, the same list for every query."""
    top = snapshot.arrays["trending_top"].astype(np.int64)
    score = snapshot.arrays["trending_score"]
    n = len(batch)
    return CandidateSet(
        "trending",
        np.repeat(np.arange(n, dtype=np.int64), len(top)),
        np.tile(top, n),
        np.tile(score, n),
    )


def upsell_universe(batch: QueryBatch, snapshot: FeatureSnapshot) -> tuple[np.ndarray, ...]:
    """Every (query, version) pair inside the anchor's family, pricier and within the cap.

    Returns:
        ``(query, product, popularity_value)`` sorted by query then product.
    """
    has = np.flatnonzero(batch.anchor >= 0)
    if len(batch) == 1:
        p, v = row_combination(snapshot.matrices["upsell_pairs"], batch.anchor[has])
        return np.zeros(len(p), dtype=np.int64), p, v
    x = indicator(has, batch.anchor[has], (len(batch), snapshot.n_products))
    c = sp.coo_matrix(x @ snapshot.matrices["upsell_pairs"])
    q, p = c.row.astype(np.int64), c.col.astype(np.int64)
    order = np.lexsort((p, q))
    return q[order], p[order], c.data[order]


def upsell_candidate_sets(batch: QueryBatch, snapshot: FeatureSnapshot) -> list[CandidateSet]:
    """All upsell sources, each scoring the same family universe its own way."""
    q, p, pop = upsell_universe(batch, snapshot)
    a = snapshot.arrays
    anchor = batch.anchor[q]
    cust = batch.customer[q]
    step = a["price"][p] / a["price"][anchor]
    level = np.full(len(q), np.nan)
    known = cust >= 0
    level[known] = a["price_level"][cust[known]]
    fit = 1.0 - np.abs(a["price_pct_in_category"][p] - level)
    lk = snapshot.lookups
    viewed = lk["views_30"].get(cust, p) + lk["carts_30"].get(cust, p)
    vb = lk["viewed_bought"].get(anchor, p)
    out = [
        CandidateSet("family_popular", q, p, pop),
        CandidateSet("family_next_tier", q, p, 1.0 / step),
    ]
    for name, score in (
        ("price_level_fit", fit),
        ("viewed_version", viewed),
        ("viewed_then_bought", vb),
    ):
        ok = np.isfinite(score) & (score > 0)
        out.append(CandidateSet(name, q[ok], p[ok], score[ok]))
    return out


CROSS_SELL_SOURCE_FUNCTIONS = (
    candidates_from_repeat,
    candidates_from_cooc,
    candidates_from_sequential,
    candidates_from_coview,
    candidates_from_cocart,
    candidates_from_category_assoc,
    candidates_from_segment_popular,
    candidates_from_trending,
)


def candidate_sets(batch: QueryBatch, snapshot: FeatureSnapshot) -> list[CandidateSet]:
    """Every source of the batch's task, before eligibility filters and truncation."""
    check_point_in_time(batch, snapshot)
    if batch.task == s.CROSS_SELL:
        return [fn(batch, snapshot) for fn in CROSS_SELL_SOURCE_FUNCTIONS]
    if batch.task == s.UPSELL:
        return upsell_candidate_sets(batch, snapshot)
    raise ValueError(f"unknown task {batch.task!r}; expected one of {s.TASKS}")


def eligible(
    batch: QueryBatch, snapshot: FeatureSnapshot, query: np.ndarray, product: np.ndarray
) -> np.ndarray:
    """Which (query, product) pairs are allowed candidates for the batch's task.

    cross_sell: outside every family of the context, not in the context, not owned by the
    customer unless consumable. upsell: not owned unless consumable (family, price and cap are
    built into the upsell universe).
    """
    a = snapshot.arrays
    owned = snapshot.lookups["owned"].get(batch.customer[query], product) > 0
    ok = ~owned | a["is_consumable"][product]
    if batch.task == s.CROSS_SELL and len(batch.context):
        fam = a["family"]
        if len(batch) == 1:
            return ok & ~np.isin(fam[product], fam[batch.context])
        ctx_fam = PairLookup(
            indicator(
                batch.context_query, fam[batch.context], (len(batch), len(snapshot.family_levels))
            )
        )
        ok &= ctx_fam.get(query, fam[product]) == 0
    return ok


def collect_candidates(batch: QueryBatch, snapshot: FeatureSnapshot) -> Candidates:
    """Run every source, filter eligibility, keep each source's top ``per_source`` and merge.

    The merged list per query keeps at most ``cross_sell_candidates`` / ``upsell_candidates``
    rows, by best rank in any source, then number of sources, then product position.
    """
    cfg = snapshot.config
    sources = SOURCES[batch.task]
    sets = candidate_sets(batch, snapshot)
    q = np.concatenate([cs.query for cs in sets])
    p = np.concatenate([cs.product for cs in sets])
    v = np.concatenate([cs.score for cs in sets])
    k = np.repeat(np.arange(len(sets), dtype=np.int64), [len(cs.query) for cs in sets])
    ok = eligible(batch, snapshot, q, p)
    q, p, v, k = q[ok], p[ok], v[ok], k[ok]
    r = rank_within(k * len(batch) + q, v)
    top = r <= cfg.per_source
    q, p, v, r, k = q[top], p[top], v[top], r[top], k[top]
    key = q * snapshot.n_products + p
    uniq, inv = np.unique(key, return_inverse=True)
    scores = np.full((len(uniq), len(sources)), np.nan)
    ranks = np.full((len(uniq), len(sources)), np.nan)
    scores[inv, k] = v
    ranks[inv, k] = r
    uq = uniq // snapshot.n_products
    up = uniq % snapshot.n_products
    best = np.nanmin(ranks, axis=1) if len(uniq) else np.zeros(0)
    n_src = np.sum(~np.isnan(ranks), axis=1)
    order = np.lexsort((up, -n_src, best, uq))
    uq, up, scores, ranks = uq[order], up[order], scores[order], ranks[order]
    limit = cfg.cross_sell_candidates if batch.task == s.CROSS_SELL else cfg.upsell_candidates
    pos = rank_within(uq, -np.arange(len(uq), dtype=np.float64))
    keep = pos <= limit
    return Candidates(uq[keep], up[keep], scores[keep], ranks[keep], sources)


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

"""Latent factors and customer neighbourhoods: candidate signals of another kind than item
co-occurrence.

A truncated SVD (scikit-learn) of the customer x product matrix of recency-weighted purchase
counts (log-scaled, idf-weighted) gives item and customer vectors; cosine similarity between
them proposes

* ``latent_context`` — products close to the context (the cart, the viewed product);
* ``latent_customer`` — products close to the customer's own history (collaborative filtering);
* ``neighbours`` — what the customer's nearest customers bought ("customers like you also
  bought"), exact nearest neighbours over a pool of the most active customers.

Vectors live in the snapshot (:class:`LatentFactors`), so serving looks them up. Every query is
scored by the same per-row dot products in batch and one-query paths (bit-identical). Exact
search over the active items and the customer pool costs well under a millisecond per query at
the catalog sizes measured (README), so no approximate index is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from features.arrays import PairLookup

TOP_FOR_NEIGHBOURS = 200


@dataclass(frozen=True)
class LatentFactors:
    """Item and customer vectors and the search pools.

    Attributes:
        item: ``(products, dims)`` L2-normalised item vectors (zero for unsold products).
        customer: ``(customers, dims)`` L2-normalised customer vectors (zero without history).
        active: Product positions searched for latent candidates (enough distinct buyers).
        pool: Customer positions searched for neighbours (the most active customers).
    """

    item: np.ndarray
    customer: np.ndarray
    active: np.ndarray
    pool: np.ndarray

    @cached_property
    def active_items(self) -> np.ndarray:
        """``item[active]``: the searched item vectors, gathered once (not per request)."""
        return self.item[self.active]

    @cached_property
    def pool_customers(self) -> np.ndarray:
        """``customer[pool]``: the searched customer vectors, gathered once."""
        return self.customer[self.pool]


def _normalise(m: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return np.where(norm > 0, m / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def latent_factors(
    frequency: PairLookup,
    buyers: np.ndarray,
    *,
    dims: int,
    min_buyers: int,
    pool_size: int,
    seed: int = 0,
) -> LatentFactors:
    """Truncated SVD of ``log1p(frequency) * idf`` (customer x product).

    Args:
        frequency: Customer x product recency-weighted order counts.
        buyers: Distinct buyers per product (the active items have at least ``min_buyers``).
        dims: Vector dimensions (capped by the matrix size).
        min_buyers: Products with fewer buyers are never proposed.
        pool_size: The most active customers (by weighted orders) searched for neighbours.
        seed: Seed of the randomized SVD.
    """
    m = sp.csr_matrix(frequency.matrix, dtype=np.float64)
    n_c, n_p = m.shape
    active = np.flatnonzero(buyers >= min_buyers).astype(np.int64)
    k = min(dims, n_c - 1, n_p - 1)
    if m.nnz == 0 or k < 2 or len(active) == 0:
        return LatentFactors(
            np.zeros((n_p, 0), np.float32),
            np.zeros((n_c, 0), np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    idf = np.log((1.0 + n_c) / (1.0 + buyers))
    x = sp.csr_matrix(m.copy())
    x.data = np.log1p(x.data)
    x = sp.csr_matrix(x @ sp.diags(idf))
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=4, random_state=seed)
    # one BLAS thread: the factors (so every snapshot) are then the same whichever process
    # builds them; the training workers run one thread each, a main process two
    with threadpool_limits(limits=1, user_api="blas"):
        customer = svd.fit_transform(x)
    item = svd.components_.T * svd.singular_values_
    activity = np.asarray(m.sum(axis=1)).ravel()
    order = np.lexsort((np.arange(n_c), -activity))
    pool = np.sort(order[: min(pool_size, int(np.sum(activity > 0)))]).astype(np.int64)
    return LatentFactors(_normalise(item), _normalise(customer), active, pool)


def top_by_vector(
    block: np.ndarray, candidates: np.ndarray, queries: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query vector, the ``n`` candidates with the highest positive cosine.

    Args:
        block: ``(len(candidates), dims)`` normalised vectors of the candidates
            (:attr:`LatentFactors.active_items` or :attr:`LatentFactors.pool_customers`).
        candidates: Positions (item or customer) of the rows of ``block``.
        queries: ``(queries, dims)`` query vectors (zero rows find nothing).
        n: How many per query.

    Returns:
        ``(query, position, score)`` sorted by query then score descending then position.
    """
    qs, ps, vs = [], [], []
    if len(candidates) == 0 or block.shape[1] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    for i in range(len(queries)):
        if not queries[i].any():
            continue
        score = block @ queries[i]
        keep = min(n, len(score))
        top = np.argpartition(-score, keep - 1)[:keep]
        top = top[np.lexsort((candidates[top], -score[top]))]
        top = top[score[top] > 0]
        qs.append(np.full(len(top), i, dtype=np.int64))
        ps.append(candidates[top])
        vs.append(score[top].astype(np.float64))
    if not qs:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    return np.concatenate(qs), np.concatenate(ps), np.concatenate(vs)

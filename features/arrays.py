"""Vectorised array helpers shared by the snapshot, candidates and features.

Everything here works on NumPy arrays and SciPy CSR matrices so that one query and a million
queries go through the same code.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Start offset of each run of equal values in an already sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    return np.concatenate(([0], change)).astype(np.int64)


def _group_then_value_order(groups: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Order by group, then ascending ``key``, ties by position (two stable sorts)."""
    by_key = np.argsort(key, kind="stable")
    return by_key[np.argsort(groups[by_key], kind="stable")]


def rank_within(groups: np.ndarray, values: np.ndarray, *, descending: bool = True) -> np.ndarray:
    """1-based rank of each value inside its group (ties broken by position).

    Args:
        groups: Group id per element (any order).
        values: Value per element; NaN ranks last.
        descending: Rank 1 is the largest value.

    Returns:
        int32 ranks aligned with the inputs.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    values = np.asarray(values, dtype=np.float64)
    key = np.where(np.isnan(values), -np.inf if descending else np.inf, values)
    order = _group_then_value_order(groups, -key if descending else key)
    g = groups[order]
    starts = group_starts(g)
    sizes = np.diff(np.append(starts, n))
    pos = np.arange(n) - np.repeat(starts, sizes)
    ranks = np.empty(n, dtype=np.int32)
    ranks[order] = pos + 1
    return ranks


def top_n_per_row(matrix: sp.csr_matrix, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` largest positive stored entries of every row of a CSR matrix.

    Returns:
        ``(rows, cols, values)`` sorted by row, then by value descending, then column.
    """
    m = sp.csr_matrix(matrix)
    m.sum_duplicates()
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    cols = m.indices.astype(np.int64)
    vals = m.data.astype(np.float64)
    keep = vals > 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = _group_then_value_order(rows, -vals)
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = group_starts(rows)
    sizes = np.diff(np.append(starts, len(rows)))
    pos = np.arange(len(rows)) - np.repeat(starts, sizes)
    keep = pos < n
    return rows[keep].astype(np.int32), cols[keep].astype(np.int32), vals[keep]


def prune_rows(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep the ``n`` largest positive entries of every row."""
    rows, cols, vals = top_n_per_row(matrix, n)
    return sp.csr_matrix((vals, (rows, cols)), shape=matrix.shape)


class PairLookup:
    """Fast ``matrix[rows[i], cols[i]]`` look-ups for many pairs at once.

    The sorted global keys are computed once, so a look-up is one ``searchsorted``.
    """

    def __init__(self, matrix: sp.spmatrix) -> None:
        m = sp.csr_matrix(matrix)
        m.sum_duplicates()
        m.sort_indices()
        self.matrix = m
        self.n_cols = np.int64(m.shape[1])
        rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
        self.keys = rows * self.n_cols + m.indices.astype(np.int64)
        self.values = m.data

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Values at the pairs (0 where absent or where a row/col index is negative)."""
        out = np.zeros(len(rows), dtype=np.float64)
        if len(rows) == 0 or len(self.keys) == 0:
            return out
        valid = (rows >= 0) & (cols >= 0)
        query = rows[valid].astype(np.int64) * self.n_cols + cols[valid].astype(np.int64)
        pos = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        out[valid] = np.where(self.keys[pos] == query, self.values[pos], 0.0)
        return out

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and values stored in row ``r`` (empty for r < 0)."""
        if r < 0:
            return np.zeros(0, dtype=np.int32), np.zeros(0)
        lo, hi = self.matrix.indptr[r], self.matrix.indptr[r + 1]
        return self.matrix.indices[lo:hi], self.matrix.data[lo:hi]


def indicator(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A binary CSR matrix with ones at ``(rows, cols)``; negative rows or cols are skipped."""
    keep = (rows >= 0) & (cols >= 0)
    data = np.ones(int(keep.sum()), dtype=np.float64)
    m = sp.csr_matrix((data, (rows[keep], cols[keep])), shape=shape)
    m.data[:] = 1.0
    return m


def gather_rows(
    matrix: sp.csr_matrix, rows: np.ndarray, owner: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stored entry of ``matrix[rows[i]]``, in the order of ``rows``.

    Args:
        matrix: A CSR matrix.
        rows: Row positions to read (repeats allowed).
        owner: A label per element of ``rows`` (default ``0..len(rows)-1``).

    Returns:
        ``(owner, column, value)`` aligned, one element per stored entry read.
    """
    rows = np.asarray(rows, dtype=np.int64)
    owner = np.arange(len(rows), dtype=np.int64) if owner is None else np.asarray(owner)
    starts = matrix.indptr[rows].astype(np.int64)
    sizes = matrix.indptr[rows + 1].astype(np.int64) - starts
    take = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(sizes.sum())
    return (
        np.repeat(owner, sizes).astype(np.int64),
        matrix.indices[take].astype(np.int64),
        matrix.data[take].astype(np.float64),
    )


def summed_pairs(
    query: np.ndarray, product: np.ndarray, value: np.ndarray, n_products: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values summed per (query, product), in the order they come (bit-identical for one query
    and many), sorted by query then product."""
    key = query.astype(np.int64) * n_products + product.astype(np.int64)
    uniq, inv = np.unique(key, return_inverse=True)
    sums = np.bincount(inv, weights=value) if len(uniq) else np.zeros(0)
    return uniq // n_products, uniq % n_products, sums


def row_combination(
    matrix: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero entries of ``sum_i weights[i] * matrix[rows[i]]`` (weights default to 1).

    This is the one-row case of ``x @ matrix`` for a sparse row ``x`` with entries ``weights``
    at ``rows``, computed without building sparse matrices (the serving path). The products are
    accumulated in the order of ``rows`` like SciPy's CSR product does, so when ``rows`` are in
    ``x``'s stored order the values are bit-identical.

    Returns:
        ``(columns, values)``, columns ascending (int64), zero sums dropped.
    """
    entry, cols, vals = gather_rows(matrix, rows)
    if weights is not None:
        vals = np.asarray(weights, dtype=np.float64)[entry] * vals
    sums = np.bincount(cols, weights=vals, minlength=matrix.shape[1]) if len(cols) else None
    if sums is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    present = np.zeros(matrix.shape[1], dtype=bool)
    present[cols] = True
    out = np.flatnonzero(present & (sums != 0))
    return out.astype(np.int64), sums[out]

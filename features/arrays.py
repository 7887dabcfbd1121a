"""Vectorised array helpers shared by the snapshot, candidates and features.

Everything here works on NumPy arrays and SciPy CSR matrices so that one query and a million
queries go through the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp


def arrow_array(values: pd.Series | np.ndarray) -> pa.Array:
    """``values`` as one Arrow array (zero-copy for Arrow-backed strings)."""
    array = pa.array(values)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def arrow_bool(array: pa.Array) -> np.ndarray:
    """An Arrow boolean array as a NumPy bool array."""
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=bool)


def is_in(values: pd.Series | np.ndarray, universe: pd.Series | np.ndarray) -> np.ndarray:
    """Boolean mask: each of ``values`` occurs in ``universe`` (Arrow's hash lookup; pandas'
    ``isin`` on Arrow-backed strings converts the universe element by element in Python)."""
    return arrow_bool(pc.is_in(arrow_array(values), value_set=arrow_array(universe)))


def runs_as_lists(frame: pd.DataFrame, key: str, value: str) -> pd.Series:
    """``frame.groupby(key, sort=False)[value].agg(list)`` for a frame whose rows of each key
    are contiguous: the lists cut from one array, not built by a Python call per group."""
    keys = frame[key].to_numpy()
    values = frame[value].to_numpy()
    starts = group_starts(keys)
    lists = [chunk.tolist() for chunk in np.split(values, starts[1:])] if len(keys) else []
    return pd.Series(lists, index=pd.Index(keys[starts], name=key), name=value, dtype=object)


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

    One sort by (group, value, position); a single group (every one-query call) skips the
    group key. Both give the ranks of two stable sorts, value then group.

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
    if descending:
        key = -key
    ranks = np.empty(n, dtype=np.int32)
    if groups[0] == groups[-1] and (groups == groups[0]).all():
        ranks[np.argsort(key, kind="stable")] = np.arange(1, n + 1, dtype=np.int32)
        return ranks
    order = np.lexsort((key, groups))
    g = groups[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(g[1:], g[:-1], out=first[1:])
    position = np.arange(n)
    start = np.maximum.accumulate(np.where(first, position, 0))
    ranks[order] = position - start + 1
    return ranks


TOP_BLOCK_CELLS = 1 << 22  # cells of one padded block in :func:`top_within` (32 MB of float64)


def top_within(groups: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The elements of rank ``<= n`` inside their group, without sorting the whole array.

    The same elements and ranks as ``rank_within(groups, values) <= n`` (descending, NaN last,
    ties broken by position): per group the ``n``-th largest value is found by a partial sort
    (``np.partition`` over padded blocks of groups), everything above it is kept, and the ties
    at it are kept in position order until ``n`` are kept. Only the kept elements are then
    ranked. Costs grow linearly with the input (a source proposing thousands of products per
    query is cut to its top ``n`` in one pass).

    Returns:
        ``(index, rank)``: positions of the kept elements in ascending order, and their 1-based
        ranks.
    """
    size = len(values)
    values = np.asarray(values, dtype=np.float64)
    if size == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    key = np.where(np.isnan(values), -np.inf, values)
    order = np.argsort(groups, kind="stable")  # by group, then position
    g = groups[order]
    starts = group_starts(g)
    sizes = np.diff(np.append(starts, size))
    if sizes.max() <= n:
        index = np.arange(size, dtype=np.int64)
        return index, rank_within(groups, values)
    k = key[order]
    row = np.repeat(np.arange(len(starts)), sizes)  # group of each sorted element
    col = np.arange(size) - np.repeat(starts, sizes)  # its position inside the group
    threshold = np.empty(len(starts))
    for lo, hi, width in _padded_blocks(sizes, n):
        first, last = int(starts[lo]), int(starts[hi - 1] + sizes[hi - 1])
        padded = np.full((hi - lo, width), -np.inf)
        padded[row[first:last] - lo, col[first:last]] = k[first:last]
        threshold[lo:hi] = np.partition(padded, width - n, axis=1)[:, -n]
    t = threshold[row]
    above = k > t
    tie = k == t
    need = n - np.bincount(row, weights=above, minlength=len(starts)).astype(np.int64)
    ties_seen = np.cumsum(tie) - tie  # ties before each element, over the whole array
    tie_before = ties_seen - np.repeat(ties_seen[starts], sizes)  # ... inside its group
    keep = above | (tie & (tie_before < need[row]))
    index = np.sort(order[keep])
    return index, rank_within(groups[index], values[index])


def within_reach(groups: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The elements at or above the ``n``-th largest value of their group (NaN lowest): a superset
    of every group's top ``n`` whichever way ties are broken, for cutting long groups before a
    costlier filter.

    Returns:
        ``(index, cut)``: positions of the kept elements in ascending order, and the group keys
        that lost elements (groups of at most ``n`` elements keep them all).
    """
    size = len(values)
    if size <= n:
        return np.arange(size, dtype=np.int64), np.zeros(0, dtype=groups.dtype)
    in_order = bool(np.all(groups[1:] >= groups[:-1]))  # a candidate set: grouped by query
    order = np.arange(size) if in_order else np.argsort(groups, kind="stable")
    sorted_groups = groups if in_order else groups[order]
    starts = group_starts(sorted_groups)
    sizes = np.diff(np.append(starts, size))
    long = np.flatnonzero(sizes > n)
    if len(long) == 0:
        return np.arange(size, dtype=np.int64), np.zeros(0, dtype=groups.dtype)
    keep = np.ones(size, dtype=bool)
    lost = np.zeros(len(long), dtype=bool)
    for i, g in enumerate(long):  # only the long groups, each by one partial sort
        lo, width = int(starts[g]), int(sizes[g])
        seg = np.asarray(values[order[lo : lo + width]], dtype=np.float64)
        seg = np.where(np.isnan(seg), -np.inf, seg)
        mask = seg >= np.partition(seg, width - n)[width - n]
        keep[lo : lo + width] = mask
        lost[i] = not mask.all()
    index = order[keep] if in_order else np.sort(order[keep])
    return index, sorted_groups[starts[long[lost]]]


def _padded_blocks(sizes: np.ndarray, n: int) -> list[tuple[int, int, int]]:
    """Contiguous blocks of groups for :func:`top_within`, each padded to its widest group (at
    least ``n``) and at most :data:`TOP_BLOCK_CELLS` cells where a group allows: ``(first group,
    end group, width)``. All groups fit in one block in a request's merge (no loop over them)."""
    widest = int(sizes.max())
    if len(sizes) * widest <= TOP_BLOCK_CELLS:
        return [(0, len(sizes), max(widest, n))]
    blocks = []
    lo = 0
    while lo < len(sizes):
        hi, width = lo + 1, int(sizes[lo])
        while hi < len(sizes) and (hi - lo + 1) * max(width, int(sizes[hi])) <= TOP_BLOCK_CELLS:
            width = max(width, int(sizes[hi]))
            hi += 1
        blocks.append((lo, hi, max(width, n)))
        lo = hi
    return blocks


def rank_within_many(
    groups: np.ndarray, columns: Sequence[np.ndarray], *, descending: bool = True
) -> np.ndarray:
    """:func:`rank_within` of several value columns over the same groups: a ``(len(columns),
    n)`` int32 array, row ``i`` the ranks of ``columns[i]``. A single group sorts all columns in
    one call."""
    n = len(groups)
    if n == 0 or not (groups[0] == groups[-1] and (groups == groups[0]).all()):
        return np.asarray(
            [rank_within(groups, c, descending=descending) for c in columns], dtype=np.int32
        ).reshape(len(columns), n)
    values = np.array(columns, dtype=np.float64)
    key = np.where(np.isnan(values), -np.inf if descending else np.inf, values)
    if descending:
        key = -key
    ranks = np.empty(values.shape, dtype=np.int32)
    order = np.argsort(key, axis=1, kind="stable")
    ranks[np.arange(len(values))[:, None], order] = np.arange(1, n + 1, dtype=np.int32)
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
        return lookup_many((self,), rows, cols)[0]

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and values stored in row ``r`` (empty for r < 0)."""
        if r < 0:
            return np.zeros(0, dtype=np.int32), np.zeros(0)
        lo, hi = self.matrix.indptr[r], self.matrix.indptr[r + 1]
        return self.matrix.indices[lo:hi], self.matrix.data[lo:hi]


def lookup_many(
    tables: Sequence[PairLookup], rows: np.ndarray, cols: np.ndarray
) -> list[np.ndarray]:
    """``[t.get(rows, cols) for t in tables]`` with the pair keys computed once and one search
    per distinct key array (tables stored on the same pairs share it, :func:`share_keys`).

    Every table must have the same number of columns.
    """
    n = len(rows)
    if n == 0 or not tables:
        return [np.zeros(n, dtype=np.float64) for _ in tables]
    n_cols = tables[0].n_cols
    if any(t.n_cols != n_cols for t in tables):
        raise ValueError("lookup_many: the tables have different numbers of columns")
    rows = rows.astype(np.int64, copy=False)
    cols = cols.astype(np.int64, copy=False)
    if rows[0] == rows[-1] and (rows == rows[0]).all():
        return _lookup_in_row(tables, int(rows[0]), cols)
    query = rows * n_cols + cols
    valid = (rows >= 0) & (cols >= 0)
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for t in tables:
        n_keys = len(t.keys)
        if n_keys == 0:
            out.append(np.zeros(n, dtype=np.float64))
            continue
        if id(t.keys) not in found:
            pos = np.searchsorted(t.keys, query)
            np.minimum(pos, n_keys - 1, out=pos)
            found[id(t.keys)] = pos, valid & (t.keys[pos] == query)
        pos, hit = found[id(t.keys)]
        out.append(np.where(hit, t.values[pos], 0.0).astype(np.float64, copy=False))
    return out


def _lookup_in_row(tables: Sequence[PairLookup], row: int, cols: np.ndarray) -> list[np.ndarray]:
    """:func:`lookup_many` when every pair is in row ``row`` (one customer, one anchor): a
    search of that row's few stored columns, nothing for an empty row."""
    n = len(cols)
    if row < 0:
        return [np.zeros(n, dtype=np.float64) for _ in tables]
    valid = cols >= 0
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for t in tables:
        lo, hi = int(t.matrix.indptr[row]), int(t.matrix.indptr[row + 1])
        if hi == lo:
            out.append(np.zeros(n, dtype=np.float64))
            continue
        if id(t.keys) not in found:  # tables sharing keys share indptr and indices too
            stored = t.matrix.indices[lo:hi]
            pos = np.searchsorted(stored, cols)
            np.minimum(pos, hi - lo - 1, out=pos)
            found[id(t.keys)] = pos, valid & (stored[pos] == cols)
        pos, hit = found[id(t.keys)]
        out.append(np.where(hit, t.matrix.data[lo:hi][pos], 0.0).astype(np.float64, copy=False))
    return out


def share_keys(tables: Iterable[PairLookup]) -> None:
    """Let tables stored on exactly the same pairs share one key array (less memory, and one
    search for all of them in :func:`lookup_many`)."""
    seen: dict[tuple[int, int], list[np.ndarray]] = {}
    for t in tables:
        same_size = seen.setdefault((int(t.n_cols), len(t.keys)), [])
        for keys in same_size:
            if keys is t.keys or np.array_equal(keys, t.keys):
                t.keys = keys
                break
        else:
            same_size.append(t.keys)


SMALL_SET = 32  # up to this many members, membership is one broadcast comparison


def is_member(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``np.isin(values, members)`` for integer arrays; a broadcast comparison when ``members``
    is small (a cart: ``np.isin``'s sort costs tens of microseconds on tiny arrays)."""
    if len(members) > SMALL_SET:
        return np.isin(values, members)
    return (values[:, None] == members[None, :]).any(axis=1)


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
    if len(rows) == 1:  # one row (the one-query path): a slice
        lo, hi = int(matrix.indptr[rows[0]]), int(matrix.indptr[rows[0] + 1])
        return (
            np.full(hi - lo, owner[0], dtype=np.int64),
            matrix.indices[lo:hi].astype(np.int64),
            matrix.data[lo:hi].astype(np.float64),
        )
    starts = matrix.indptr[rows].astype(np.int64)
    sizes = matrix.indptr[rows + 1].astype(np.int64) - starts
    take = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(sizes.sum())
    return (
        np.repeat(owner, sizes).astype(np.int64),
        matrix.indices[take].astype(np.int64),
        matrix.data[take].astype(np.float64),
    )


def unique_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for a 1-D array, without its per-call overhead
    (the same sorted distinct values and the same inverse)."""
    if len(keys) == 0:
        return keys[:0], np.zeros(0, dtype=np.int64)
    perm = np.argsort(keys, kind="stable")
    ordered = keys[perm]
    first = np.empty(len(keys), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[perm] = np.cumsum(first) - 1
    return ordered[first], inverse


def summed_pairs(
    query: np.ndarray, product: np.ndarray, value: np.ndarray, n_products: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values summed per (query, product), in the order they come (bit-identical for one query
    and many), sorted by query then product."""
    key = query.astype(np.int64) * n_products + product.astype(np.int64)
    uniq, inv = unique_inverse(key)
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

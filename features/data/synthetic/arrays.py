"""Vectorised NumPy and Arrow helpers shared by the synthetic shop's modules.

Per-row discrete sampling, a collector of parallel column pieces, a packed stable sort and
zero-padded id strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class _RowSampler:
    """Inverse-CDF sampling from one of many discrete distributions, picked per draw.

    All rows' CDFs are laid end to end (row ``g`` shifted by ``g``) so a single
    ``searchsorted`` draws from a different distribution for every element.

    Attributes:
        flat: Shifted CDFs, ``n_rows * width`` non-decreasing values.
        width: Number of outcomes per row.
        last: Last outcome with a positive weight, per row.
    """

    flat: np.ndarray
    width: int
    last: np.ndarray

    @classmethod
    def from_weights(cls, weights: np.ndarray) -> _RowSampler:
        """Build from non-negative weights of shape ``(n_rows, width)``, each row summing > 0."""
        weights = np.asarray(weights, dtype=np.float64)
        cdf = np.cumsum(weights, axis=1)
        cdf /= cdf[:, -1:]
        cdf[:, -1] = 1.0
        positive = weights > 0
        last = weights.shape[1] - 1 - np.argmax(positive[:, ::-1], axis=1)
        flat = (cdf + np.arange(len(cdf))[:, None]).ravel()
        return cls(flat=flat, width=weights.shape[1], last=last)

    def sample(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        """Draw one outcome per element of ``rows`` (row indices) from that row's distribution."""
        rows = np.asarray(rows, dtype=np.int64)
        u = rng.random(len(rows))
        idx = np.searchsorted(self.flat, rows + u, side="right") - rows * self.width
        return np.minimum(idx, self.last[rows])


def _draw_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Draw one outcome per element of ``rows`` from the matching row of ``probs``."""
    return _RowSampler.from_weights(probs).sample(rng, rows)


class _Collector:
    """Accumulates parallel column pieces and concatenates them once."""

    def __init__(self, **dtypes: type[np.integer]) -> None:
        self._dtypes = dtypes
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in dtypes}

    def add(self, **columns: np.ndarray | int) -> None:
        """Append one piece; scalars are broadcast to the length of the array columns."""
        size = max((np.size(v) for v in columns.values() if np.ndim(v) > 0), default=1)
        for name, dtype in self._dtypes.items():
            piece = np.asarray(columns[name]).astype(dtype, copy=False)
            self._parts[name].append(np.broadcast_to(piece, (size,)))

    def pop(self, name: str) -> np.ndarray:
        """The concatenation of every piece of one column, releasing the pieces."""
        parts = self._parts.pop(name)
        if not parts:
            return np.zeros(0, dtype=self._dtypes[name])
        return np.concatenate(parts)

    def peek(self, name: str) -> np.ndarray:
        """The concatenation of every piece of one column so far, keeping the pieces."""
        return np.concatenate(self._parts[name])


def _sort_index(*keys: np.ndarray) -> np.ndarray:
    """Indices that sort rows by ``keys`` (most significant first), ties kept in row order.

    Keys are non-negative integers. When they fit, they are packed with the row number into
    one int64 so a fast unstable sort gives the same fully determined order as a stable
    lexicographic sort (``np.lexsort``, the fallback).
    """
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    columns = (*keys, np.arange(n))
    if min(int(key.min()) for key in keys) < 0:
        raise ValueError("sort keys must be non-negative")
    widths = [max(int(key.max()), 1).bit_length() for key in columns]
    if sum(widths) > 63:
        return np.lexsort(keys[::-1])
    packed = np.zeros(n, dtype=np.int64)
    for key, width in zip(columns, widths, strict=True):
        packed <<= width
        packed |= key.astype(np.int64, copy=False)
    return np.argsort(packed)


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first row of every run of equal values."""
    first = np.ones(len(sorted_keys), dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return first


def _id_strings(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded string ids such as ``C0000001`` built in Arrow (no Python loop)."""
    digits = pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.string())
    padded = pc.utf8_lpad(digits, width=width, padding="0")
    return pc.binary_join_element_wise(prefix, padded, "")

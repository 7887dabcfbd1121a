"""Queries as arrays: the one input format of candidate generation and features.

A query is (customer, placement, anchor product, cart, ``as_of``, task). Training turns a frame
of many queries into a :class:`QueryBatch`; serving builds a one-query batch with
:func:`single_query` without touching pandas. Everything downstream is the same code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import cast

import numpy as np
import pandas as pd

from features.data import schema as s
from features.live import NO_ACTIVITY, LiveActivity
from features.snapshot import FeatureSnapshot, to_days

# Query frame columns (DESIGN.md, ``xsell recommend``).
QUERY_ID = "query_id"
PLACEMENT = "placement"
ANCHOR = "anchor_product_id"
CART = "cart_product_ids"
AS_OF = "as_of"
K = "k"
TASK = "task"
QUERY_COLUMNS = (QUERY_ID, s.CUSTOMER_ID, PLACEMENT, ANCHOR, CART, AS_OF)
PLACEMENT_CODES = {p: i for i, p in enumerate(s.PLACEMENTS)}


@dataclass
class QueryBatch:
    """Queries of one task, as arrays aligned by query position.

    Attributes:
        task: ``cross_sell`` or ``upsell``.
        query_ids: Query ids (object array of str).
        customer: Customer position in the snapshot, -1 when unknown.
        anchor: Anchor product position, -1 when none or unknown.
        context_ptr: CSR offsets into ``context`` per query.
        context: Known context product positions (cart plus anchor, de-duplicated).
        placement: Placement code (index into ``schema.PLACEMENTS``).
        as_of: Query time in float days since 1970-01-01.
        unknown_products: Per query, product ids that the snapshot does not know.
        live: Per query, the customer's activity after the snapshot (:mod:`features.live`);
            empty for batches read from history alone (training, batch scoring).
    """

    task: str
    query_ids: np.ndarray
    customer: np.ndarray
    anchor: np.ndarray
    context_ptr: np.ndarray
    context: np.ndarray
    placement: np.ndarray
    as_of: np.ndarray
    unknown_products: list[list[str]] = field(default_factory=list)
    live: tuple[LiveActivity, ...] = ()

    def __len__(self) -> int:
        return len(self.query_ids)

    @cached_property
    def context_query(self) -> np.ndarray:
        """Query position of every entry of ``context`` (computed once per batch)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.context_ptr))

    @cached_property
    def distinct_context(self) -> np.ndarray:
        """``np.unique(context)``: the distinct context products of a one-query batch, sorted
        (the sources that sum table rows read it; computed once per batch)."""
        return np.unique(self.context)

    def context_value(self, price: np.ndarray) -> np.ndarray:
        """Summed price of each query's context products (0 for an empty context)."""
        return np.bincount(self.context_query, weights=price[self.context], minlength=len(self))

    def live_count(self, kind: str, q: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Live ``kind`` (bought / viewed / carted) counts of products ``p`` for queries ``q``."""
        out = np.zeros(len(q))
        for i, activity in enumerate(self.live):
            if activity:
                at = np.flatnonzero(q == i)
                out[at] = activity.count(kind, p[at])
        return out

    def activity(self, i: int) -> LiveActivity:
        """Query ``i``'s live activity (none when the batch carries none)."""
        return self.live[i] if self.live else NO_ACTIVITY

    def subset(self, rows: np.ndarray) -> QueryBatch:
        """A batch of the queries at positions ``rows`` (in that order)."""
        sizes = np.diff(self.context_ptr)[rows]
        starts = self.context_ptr[rows]
        take = np.repeat(starts, sizes) + (
            np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        )
        return QueryBatch(
            task=self.task,
            query_ids=self.query_ids[rows],
            customer=self.customer[rows],
            anchor=self.anchor[rows],
            context_ptr=np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
            context=self.context[take.astype(np.int64)],
            placement=self.placement[rows],
            as_of=self.as_of[rows],
            unknown_products=[self.unknown_products[i] for i in rows]
            if self.unknown_products
            else [],
            live=tuple(self.live[i] for i in rows) if self.live else (),
        )


def batch_from_frame(queries: pd.DataFrame, snapshot: FeatureSnapshot, *, task: str) -> QueryBatch:
    """Turn a query frame into a :class:`QueryBatch` against ``snapshot``.

    Args:
        queries: Columns ``query_id``, ``customer_id``, ``placement``, ``anchor_product_id``
            (nullable), ``cart_product_ids`` (list-like, may be empty), ``as_of``.
        snapshot: The snapshot whose indices to use.
        task: The task all these queries are scored for.
    """
    missing = [c for c in QUERY_COLUMNS if c not in queries.columns]
    if missing:
        raise ValueError(f"queries: missing column(s) {missing}")
    n = len(queries)
    customer = np.fromiter(
        (snapshot.customer_index.get(c, -1) for c in queries[s.CUSTOMER_ID].astype(str)),
        dtype=np.int64,
        count=n,
    )
    anchors = queries[ANCHOR].to_numpy(dtype=object)
    anchor = np.fromiter(
        (snapshot.product_index.get(a, -1) if isinstance(a, str) else -1 for a in anchors),
        dtype=np.int64,
        count=n,
    )
    carts = queries[CART].to_numpy(dtype=object)
    ptr = np.zeros(n + 1, dtype=np.int64)
    ctx: list[int] = []
    unknown: list[list[str]] = []
    for i in range(n):
        known, bad = _resolve_context(snapshot, anchors[i], carts[i])
        ctx.extend(known)
        unknown.append(bad)
        ptr[i + 1] = len(ctx)
    placement = queries[PLACEMENT].map(PLACEMENT_CODES)
    if placement.isna().any():
        bad_rows = queries.loc[placement.isna(), [QUERY_ID, PLACEMENT]]
        raise ValueError(
            f"queries.placement: unknown placement in {bad_rows.head(5).to_dict('records')}"
        )
    return QueryBatch(
        task=task,
        query_ids=queries[QUERY_ID].astype(str).to_numpy(dtype=object),
        customer=customer,
        anchor=anchor,
        context_ptr=ptr,
        context=np.asarray(ctx, dtype=np.int64),
        placement=placement.to_numpy(dtype=np.int64),
        as_of=np.asarray(to_days(pd.to_datetime(queries[AS_OF])), dtype=np.float64),
        unknown_products=unknown,
    )


def _resolve_context(
    snapshot: FeatureSnapshot, anchor: object, cart: object
) -> tuple[list[int], list[str]]:
    items: list[str] = []
    if isinstance(anchor, str):
        items.append(anchor)
    if cart is not None and not (isinstance(cart, float) and np.isnan(cart)):
        items.extend(str(x) for x in cast("Iterable[object]", cart))
    known: list[int] = []
    bad: list[str] = []
    seen: set[int] = set()
    for pid in items:
        j = snapshot.product_index.get(pid, -1)
        if j < 0:
            bad.append(pid)
        elif j not in seen:
            seen.add(j)
            known.append(j)
    return known, bad


def single_query(
    snapshot: FeatureSnapshot,
    *,
    task: str,
    customer_id: str,
    placement: str,
    anchor_product_id: str | None,
    cart_product_ids: list[str],
    as_of: float,
    query_id: str = "q",
    live: LiveActivity = NO_ACTIVITY,
) -> QueryBatch:
    """A one-query batch built with dict look-ups only (the serving path).

    Args:
        as_of: Query time in float days since 1970-01-01 (see ``snapshot.to_days``).
        live: The customer's activity after the snapshot.
    """
    known, bad = _resolve_context(snapshot, anchor_product_id, cart_product_ids)
    anchor = snapshot.product_index.get(anchor_product_id, -1) if anchor_product_id else -1
    return QueryBatch(
        task=task,
        query_ids=np.asarray([query_id], dtype=object),
        customer=np.asarray([snapshot.customer_index.get(customer_id, -1)], dtype=np.int64),
        anchor=np.asarray([anchor], dtype=np.int64),
        context_ptr=np.asarray([0, len(known)], dtype=np.int64),
        context=np.asarray(known, dtype=np.int64),
        placement=np.asarray([PLACEMENT_CODES[placement]], dtype=np.int64),
        as_of=np.asarray([as_of], dtype=np.float64),
        unknown_products=[bad],
        live=(live,) if live else (),
    )

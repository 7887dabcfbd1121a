"""What a customer did after the snapshot: live events turned into the request's state.

The service stores purchases, views and cart changes as they happen (``POST /events``) and reads
one customer's events since the snapshot's cut-off on every request. :func:`live_activity` turns
them into a :class:`LiveActivity` of product positions, which the request pipeline uses at once:

- a product **bought** after the snapshot is no longer new to the customer (cross-sell skips it),
  a durable one is owned (suppressed everywhere), and a consumable just bought is not due
  (replenish skips it);
- the **live cart** (adds minus removes since the last purchase) is the context when a request
  sends no cart;
- the **last live order** is the post-purchase context;
- **views and add-to-carts** count in the customer's 7- and 30-day browsing features and in the
  "you looked at it" upsell source, as if they had happened at the snapshot's cut-off.

Only the online path (one-query batches) carries live activity; training and batch scoring
read history from the snapshot alone, so nothing here can leak later data into training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np

from features.data import schema as s
from features.snapshot import FeatureSnapshot

PURCHASE = "purchase"
_EMPTY = np.zeros(0, dtype=np.int64)


class LiveEventLike(Protocol):
    """The fields :func:`live_activity` reads (``online.records.LiveEvent`` has them)."""

    @property
    def event_type(self) -> str: ...
    @property
    def product_id(self) -> str: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def order_id(self) -> str | None: ...
    @property
    def quantity(self) -> float: ...


@dataclass(frozen=True)
class LiveActivity:
    """One customer's activity after the snapshot, as snapshot product positions.

    Attributes:
        bought: Products with a positive net quantity bought (sorted, unique).
        last_order: Products of the latest order (in line order).
        cart: Products in the cart now: added, not removed, not bought since (in add order).
        viewed: One entry per view (repeats count).
        carted: One entry per add-to-cart (repeats count).
        n_events: Events read.
        unknown_products: Events naming products the snapshot does not know (ignored).
    """

    bought: np.ndarray = field(default_factory=lambda: _EMPTY)
    last_order: np.ndarray = field(default_factory=lambda: _EMPTY)
    cart: np.ndarray = field(default_factory=lambda: _EMPTY)
    viewed: np.ndarray = field(default_factory=lambda: _EMPTY)
    carted: np.ndarray = field(default_factory=lambda: _EMPTY)
    n_events: int = 0
    unknown_products: int = 0

    def __bool__(self) -> bool:
        return self.n_events > 0

    def count(self, kind: str, products: np.ndarray) -> np.ndarray:
        """How often each of ``products`` appears in ``kind`` (bought / viewed / carted)."""
        values = getattr(self, kind)
        if len(values) == 0 or len(products) == 0:
            return np.zeros(len(products))
        uniq, counts = np.unique(values, return_counts=True)
        at = np.minimum(np.searchsorted(uniq, products), len(uniq) - 1)
        return np.where(uniq[at] == products, counts[at], 0).astype(np.float64)


NO_ACTIVITY = LiveActivity()


def live_activity(snapshot: FeatureSnapshot, events: Iterable[LiveEventLike]) -> LiveActivity:
    """One customer's events (any order) as a :class:`LiveActivity` against ``snapshot``.

    Events at or before the snapshot's cut-off are ignored: the snapshot already holds them.
    """
    events = list(events)
    if not events:  # most requests: nothing since the snapshot
        return NO_ACTIVITY
    index = snapshot.product_index
    cutoff = snapshot.as_of_timestamp.to_pydatetime()
    rows = sorted((e for e in events if e.ts > cutoff), key=lambda e: e.ts)
    if not rows:
        return NO_ACTIVITY
    net: dict[int, float] = {}
    orders: dict[str, tuple[datetime, list[int]]] = {}
    cart: dict[int, None] = {}
    viewed: list[int] = []
    carted: list[int] = []
    unknown = 0
    for e in rows:
        p = index.get(e.product_id, -1)
        if p < 0:
            unknown += 1
            continue
        if e.event_type == PURCHASE:
            net[p] = net.get(p, 0.0) + float(e.quantity)
            key = e.order_id or f"{e.ts.isoformat()}"
            orders.setdefault(key, (e.ts, []))[1].append(p)
            cart.pop(p, None)
        elif e.event_type == s.VIEW:
            viewed.append(p)
        elif e.event_type == s.ADD_TO_CART:
            carted.append(p)
            cart[p] = None
        elif e.event_type == s.REMOVE_FROM_CART:
            cart.pop(p, None)
    last = max(orders.values(), key=lambda o: o[0])[1] if orders else []
    return LiveActivity(
        bought=np.asarray(sorted(p for p, q in net.items() if q > 0), dtype=np.int64),
        last_order=np.asarray(list(dict.fromkeys(last)), dtype=np.int64),
        cart=np.asarray(list(cart), dtype=np.int64),
        viewed=np.asarray(viewed, dtype=np.int64),
        carted=np.asarray(carted, dtype=np.int64),
        n_events=len(rows),
        unknown_products=unknown,
    )

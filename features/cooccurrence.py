"""Item-to-item tables mined from baskets, sessions and order sequences (sparse, pruned).

Every function reads only the rows it is given; the snapshot passes rows before its cut-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.arrays import PairLookup, indicator, prune_rows
from features.data import schema as s
from features.data.io import Shop


def shrunk_lift(
    counts: sp.csr_matrix, n_a: np.ndarray, n_b: np.ndarray, n: float, prior: float
) -> sp.csr_matrix:
    """Shrunk lift ``(C + prior) / (E + prior)`` on the stored entries, E = n_a n_b / n."""
    c = counts.tocoo()
    expected = n_a[c.row] * n_b[c.col] / max(n, 1.0)
    lift = (c.data + prior) / (expected + prior)
    return sp.csr_matrix((lift, (c.row, c.col)), shape=counts.shape)


@dataclass(frozen=True)
class BasketCounts:
    """Co-occurrence counts of items over baskets: what :func:`basket_lift` turns into tables.

    Attributes:
        pairs: Item x item number of baskets holding both (diagonal zero).
        items: Per item, the number of baskets holding it.
        baskets: Number of baskets.
    """

    pairs: sp.csr_matrix
    items: np.ndarray
    baskets: int


def basket_counts(group: np.ndarray, item: np.ndarray, n_items: int) -> BasketCounts:
    """Pair and item counts from (basket, item) incidences (an item counts once per basket)."""
    if len(group) == 0:
        return BasketCounts(sp.csr_matrix((n_items, n_items)), np.zeros(n_items), 0)
    _, g = np.unique(group, return_inverse=True)
    b = indicator(g, item, (int(g.max()) + 1, n_items))
    counts = (b.T @ b).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    return BasketCounts(counts, np.asarray(b.sum(axis=0)).ravel(), b.shape[0])


def basket_lift(
    counts: BasketCounts, prior: float, neighbours: int, min_count: int = 1
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Item x item shrunk lift and confidence from basket counts.

    Returns:
        ``(lift, confidence)``, both pruned to the top ``neighbours`` by lift per row, diagonal
        removed, only pairs with lift > 1.
    """
    n_items = len(counts.items)
    if counts.baskets == 0:
        empty = sp.csr_matrix((n_items, n_items))
        return empty, empty
    pairs = sp.csr_matrix(counts.pairs, copy=True)
    pairs.sum_duplicates()
    pairs.sort_indices()
    pairs.data[pairs.data < min_count] = 0
    pairs.eliminate_zeros()
    n_i = counts.items
    lift = shrunk_lift(pairs, n_i, n_i, counts.baskets, prior)
    lift.data[lift.data <= 1.0] = 0
    lift.eliminate_zeros()
    lift = prune_rows(lift, neighbours)
    lc = lift.tocoo()
    conf = sp.csr_matrix(
        (PairLookup(pairs).get(lc.row, lc.col) / np.maximum(n_i[lc.row], 1), (lc.row, lc.col)),
        shape=lift.shape,
    )
    return lift, conf


def cooccurrence(
    group: np.ndarray,
    item: np.ndarray,
    n_items: int,
    prior: float,
    neighbours: int,
    min_count: int = 1,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Item x item shrunk lift and confidence from (group, item) incidences
    (:func:`basket_counts`, then :func:`basket_lift`)."""
    return basket_lift(basket_counts(group, item, n_items), prior, neighbours, min_count)


def sequential_lift(
    orders: pd.DataFrame,
    n_items: int,
    window_days: float,
    prior: float,
    neighbours: int,
    min_count: int = 1,
) -> sp.csr_matrix:
    """Shrunk lift of "bought A in one order, then B in the customer's next order within N days".

    Args:
        orders: Distinct ``(order, customer, day, item)`` rows.
    """
    heads = orders.drop_duplicates("order").sort_values(["customer", "day", "order"])
    same = heads["customer"].to_numpy()[1:] == heads["customer"].to_numpy()[:-1]
    gap = np.diff(heads["day"].to_numpy())
    ok = same & (gap > 0) & (gap <= window_days)
    prev_o = heads["order"].to_numpy()[:-1][ok]
    next_o = heads["order"].to_numpy()[1:][ok]
    if len(prev_o) == 0:
        return sp.csr_matrix((n_items, n_items))
    codes, o = np.unique(orders["order"].to_numpy(), return_inverse=True)
    b = indicator(o, orders["item"].to_numpy(), (len(codes), n_items))
    pos_prev = np.searchsorted(codes, prev_o)
    pos_next = np.searchsorted(codes, next_o)
    bp, bn = b[pos_prev], b[pos_next]
    counts = (bp.T @ bn).tocsr()
    counts.setdiag(0)
    counts.data[counts.data < min_count] = 0
    counts.eliminate_zeros()
    n_a = np.asarray(bp.sum(axis=0)).ravel()
    n_b = np.asarray(bn.sum(axis=0)).ravel()
    lift = shrunk_lift(counts, n_a, n_b, len(prev_o), prior)
    lift.data[lift.data <= 1.0] = 0
    lift.eliminate_zeros()
    return prune_rows(lift, neighbours)


def sessions(events: pd.DataFrame, gap_minutes: int) -> np.ndarray:
    """A session number per event row: ``session_id`` when present, else gaps per customer."""
    if s.SESSION_ID in events.columns and events[s.SESSION_ID].notna().all():
        key = events[s.CUSTOMER_ID] + "\x1f" + events[s.SESSION_ID]
        return pd.factorize(key)[0]
    order = np.lexsort((events[s.TS].to_numpy(), events[s.CUSTOMER_ID].to_numpy()))
    cust = events[s.CUSTOMER_ID].to_numpy()[order]
    ts = events[s.TS].to_numpy()[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (cust[1:] != cust[:-1]) | ((ts[1:] - ts[:-1]) > np.timedelta64(gap_minutes, "m"))
    sess = np.empty(len(order), dtype=np.int64)
    sess[order] = np.cumsum(new) - 1
    return sess


def viewed_then_bought(
    shop: Shop,
    ev: pd.DataFrame,
    sess: np.ndarray,
    p_of: np.ndarray,
    *,
    as_of: pd.Timestamp,
    window_days: int,
    n_products: int,
) -> sp.csr_matrix:
    """Counts of "viewed A in a session, bought B in the customer's next order within N days"
    (``n_products`` x ``n_products``, rows and columns the sorted catalog's positions)."""
    n_p = n_products
    pur = shop.purchases
    bought = ((pur[s.TS] < as_of) & (pur[s.QUANTITY] > 0)).to_numpy()
    pur = pur.loc[bought]
    codes = shop.purchase_codes  # positions in the sorted catalog
    assert codes.order is not None
    views = ev[s.EVENT_TYPE].to_numpy() != s.REMOVE_FROM_CART
    if not views.any() or len(pur) == 0:
        return sp.csr_matrix((n_p, n_p))
    starts = (
        pd.DataFrame(
            {"sess": sess, s.CUSTOMER_ID: ev[s.CUSTOMER_ID].to_numpy(), s.TS: ev[s.TS].to_numpy()}
        )
        .groupby("sess", sort=True)
        .agg(**{s.CUSTOMER_ID: (s.CUSTOMER_ID, "first"), s.TS: (s.TS, "min")})
        .reset_index()
        .sort_values(s.TS)
    )
    # orders as integer codes (a hash, not a sort of the id strings); each order's first line
    order_of_line, order_codes = pd.factorize(codes.order[bought])
    first = np.unique(order_of_line, return_index=True)[1]  # in line order, like drop_duplicates
    heads = pd.DataFrame(
        {
            "order_row": order_of_line[first],
            s.CUSTOMER_ID: pur[s.CUSTOMER_ID].to_numpy()[first],
            "order_ts": pur[s.TS].to_numpy()[first],
        }
    ).sort_values("order_ts")
    matched = pd.merge_asof(
        starts,
        heads,
        left_on=s.TS,
        right_on="order_ts",
        by=s.CUSTOMER_ID,
        direction="forward",
        allow_exact_matches=False,
        tolerance=pd.Timedelta(days=window_days),
    ).dropna(subset=["order_row"])
    if len(matched) == 0:
        return sp.csr_matrix((n_p, n_p))
    b = indicator(order_of_line, codes.product[bought], (len(order_codes), n_p))
    n_sess = int(sess.max()) + 1
    v = indicator(sess[views], p_of[views], (n_sess, n_p))
    sess_rows = matched["sess"].to_numpy()
    order_rows = matched["order_row"].to_numpy().astype(np.int64)
    vb = (v[sess_rows].T @ b[order_rows]).tocsr()
    vb.setdiag(0)
    vb.eliminate_zeros()
    return vb

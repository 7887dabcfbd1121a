"""Training queries and their labels, mined from history.

Definitions (the README repeats them; every metric means these):

cross_sell and replenish, one query per order (the same queries, different positives):
  * an order with two or more distinct products: the context is the first half of its products
    (a deterministic hash order), ``as_of`` is the order time, placement ``cart`` (or
    ``product_page`` when the context is one product);
  * an order with one product: that product is the context, placement ``product_page``;
  * additionally, for every ``post_purchase_every``-th order (hash), a ``post_purchase`` query
    whose context is the whole order and whose ``as_of`` is one second after it.
  Products bought next: the order's other products (not for post_purchase) and the products
  the customer bought in the window after ``as_of`` (``cross_sell_window_days`` /
  ``replenish_window_days``).
  cross_sell positives: those new to the customer (never bought before ``as_of``) outside
  every family of the context. replenish positives: those the customer bought before
  ``as_of`` (re-buys), other than the context products.

upsell, anchor product A considered at ``as_of``:
  * with events: the first view or add-to-cart of A in a session; positives are products of A's
    family with a higher list price that the customer bought within ``upsell_window_days``;
  * without events: a purchase of A; positives are pricier versions of A's family bought in a
    later order within ``upsell_window_days``.
  Positives are any pricier version (also above the uplift cap: candidate recall shows how
  many the cap excludes).

Only queries with at least one positive are kept.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.arrays import is_in, runs_as_lists
from features.batch import ANCHOR, AS_OF, CART, PLACEMENT, QUERY_ID, TASK
from features.config import FeatureConfig
from features.data import schema as s
from features.data.io import Shop

REBUY = "rebuy"
POST_PURCHASE_EVERY = 4
ONE_SECOND = pd.Timedelta(seconds=1)


@dataclass(frozen=True)
class LabelledQueries:
    """Queries of one task and their positive products.

    Attributes:
        queries: ``query_id, customer_id, task, placement, anchor_product_id,
            cart_product_ids, as_of``, sorted by ``as_of`` then ``query_id``.
        labels: ``query_id, product_id, rebuy`` positives (``rebuy``: the customer bought the
            product before the query's ``as_of``).
    """

    queries: pd.DataFrame
    labels: pd.DataFrame


def _hash01(values: pd.Series) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) per string (stable across runs)."""
    digest = pd.util.hash_pandas_object(
        values.astype(str), index=False, hash_key="xsell-queries-v1"
    )
    return (digest.to_numpy() % np.uint64(1_000_003)).astype(np.float64) / 1_000_003.0


_PER_SHOP: dict[int, tuple[weakref.ref[Shop], pd.DataFrame, pd.Series]] = {}


def _lines_and_first(shop: Shop) -> tuple[pd.DataFrame, pd.Series]:
    """:func:`_lines` and :func:`_first_bought` of ``shop``, computed once per shop object (every
    task and cut-off of a run mines the same lines; the shop is frozen)."""
    key = id(shop)
    held = _PER_SHOP.get(key)
    if held is not None and held[0]() is shop:
        return held[1], held[2]
    lines = _lines(shop)
    first = _first_bought(lines)
    _PER_SHOP[key] = (weakref.ref(shop, lambda _: _PER_SHOP.pop(key, None)), lines, first)
    return lines, first


def _lines(shop: Shop) -> pd.DataFrame:
    """Distinct positive order lines with product attributes."""
    pur = shop.purchases
    pur = pur.loc[pur[s.QUANTITY] > 0, [s.ORDER_ID, s.CUSTOMER_ID, s.PRODUCT_ID, s.TS]]
    pur = pur.drop_duplicates([s.ORDER_ID, s.PRODUCT_ID])
    prod = shop.products[[s.PRODUCT_ID, s.FAMILY, s.PRICE, s.IS_CONSUMABLE]]
    return pur.merge(prod, on=s.PRODUCT_ID, how="left")


def _first_bought(lines: pd.DataFrame) -> pd.Series:
    return lines.groupby([s.CUSTOMER_ID, s.PRODUCT_ID], sort=False)[s.TS].min()


def _order_queries(
    shop: Shop, *, start: pd.Timestamp, end: pd.Timestamp, window_days: int, prefix: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Order-based queries with ``as_of`` in ``[start, end)`` and every product bought next.

    Returns:
        ``(queries, bought)``: the queries (an in-order query per order and a post-purchase
        query for every ``POST_PURCHASE_EVERY``-th order), and ``query_id, product_id`` of the
        order's other products (in-order queries) and of the customer's purchases in the
        ``window_days`` after ``as_of`` (labels may look past ``end``).
    """
    lines, first = _lines_and_first(shop)
    in_range = lines.loc[(lines[s.TS] >= start) & (lines[s.TS] < end)].copy()
    in_range["h"] = _hash01(in_range[s.ORDER_ID] + "|" + in_range[s.PRODUCT_ID])
    in_range = in_range.sort_values([s.ORDER_ID, "h", s.PRODUCT_ID])
    pos_in_order = in_range.groupby(s.ORDER_ID, sort=False).cumcount()
    size = in_range.groupby(s.ORDER_ID, sort=False)[s.PRODUCT_ID].transform("size")
    in_range["ctx"] = pos_in_order < np.where(size >= 2, size // 2, 1)
    heads = in_range.drop_duplicates(s.ORDER_ID)[[s.ORDER_ID, s.CUSTOMER_ID, s.TS]]

    ctx = in_range.loc[in_range["ctx"]]
    ctx_lists = runs_as_lists(ctx, s.ORDER_ID, s.PRODUCT_ID)  # in_range is sorted by order
    q_in = heads.assign(
        **{
            QUERY_ID: f"{prefix}-" + heads[s.ORDER_ID],
            AS_OF: heads[s.TS],
            CART: heads[s.ORDER_ID].map(ctx_lists),
        }
    )
    q_in[PLACEMENT] = np.where(q_in[CART].map(len) >= 2, "cart", "product_page")
    pp_pick = _hash01(heads[s.ORDER_ID]) < 1.0 / POST_PURCHASE_EVERY
    whole = runs_as_lists(in_range, s.ORDER_ID, s.PRODUCT_ID)
    pp = heads.loc[pp_pick]
    q_pp = pp.assign(
        **{
            QUERY_ID: f"{prefix}-pp-" + pp[s.ORDER_ID],
            AS_OF: pp[s.TS] + ONE_SECOND,
            CART: pp[s.ORDER_ID].map(whole),
            PLACEMENT: "post_purchase",
        }
    )
    queries = pd.concat([q_in, q_pp], ignore_index=True)
    rest = in_range.loc[~in_range["ctx"], [s.ORDER_ID, s.PRODUCT_ID]].merge(
        q_in[[s.ORDER_ID, QUERY_ID]], on=s.ORDER_ID
    )
    window = pd.Timedelta(days=window_days)
    soon = lines.loc[(lines[s.TS] >= start) & (lines[s.TS] <= end + window)]
    later = queries[[QUERY_ID, s.CUSTOMER_ID, AS_OF, s.ORDER_ID]].merge(
        soon[[s.CUSTOMER_ID, s.PRODUCT_ID, s.TS, s.ORDER_ID]].rename(columns={s.ORDER_ID: "o2"}),
        on=s.CUSTOMER_ID,
    )
    later = later.loc[
        (later[s.TS] >= later[AS_OF])
        & (later[s.TS] <= later[AS_OF] + window)
        & (later["o2"] != later[s.ORDER_ID])
    ]
    bought = pd.concat([rest[[QUERY_ID, s.PRODUCT_ID]], later[[QUERY_ID, s.PRODUCT_ID]]])
    return queries, with_rebuy_flag(bought.drop_duplicates(), queries, first)


def with_rebuy_flag(labels: pd.DataFrame, queries: pd.DataFrame, first: pd.Series) -> pd.DataFrame:
    """``labels`` with ``rebuy``: the customer bought the product before the query's ``as_of``."""
    meta = queries.set_index(QUERY_ID)[[s.CUSTOMER_ID, AS_OF]]
    lab = labels.join(meta, on=QUERY_ID)
    key = pd.MultiIndex.from_arrays([lab[s.CUSTOMER_ID], lab[s.PRODUCT_ID]])
    first_ts = first.reindex(key).to_numpy()
    rebuy = pd.notna(first_ts) & (first_ts < lab[AS_OF].to_numpy())
    return labels.assign(**{REBUY: np.asarray(rebuy, dtype=bool)})


def _context_families(queries: pd.DataFrame, shop: Shop) -> pd.DataFrame:
    fam = shop.products.set_index(s.PRODUCT_ID)[s.FAMILY]
    ctx = queries[[QUERY_ID, CART]].explode(CART).dropna()
    return pd.DataFrame({QUERY_ID: ctx[QUERY_ID], s.FAMILY: ctx[CART].map(fam)}).drop_duplicates()


def cross_sell_queries(
    shop: Shop, *, start: pd.Timestamp, end: pd.Timestamp, config: FeatureConfig
) -> LabelledQueries:
    """Cross-sell queries whose ``as_of`` is in ``[start, end)``: positives are products new to
    the customer (never bought before ``as_of``) outside every family of the context."""
    queries, bought = _order_queries(
        shop, start=start, end=end, window_days=config.cross_sell_window_days, prefix="cs"
    )
    fam = shop.products.set_index(s.PRODUCT_ID)[s.FAMILY]
    lab = bought.loc[~bought[REBUY]]
    lab = lab.assign(**{s.FAMILY: lab[s.PRODUCT_ID].map(fam)})
    lab = lab.merge(
        _context_families(queries, shop).assign(_in_ctx=True), on=[QUERY_ID, s.FAMILY], how="left"
    )
    lab = lab.loc[lab["_in_ctx"].isna(), [QUERY_ID, s.PRODUCT_ID, REBUY]]
    return _finish(queries, lab, s.CROSS_SELL)


def replenish_queries(
    shop: Shop, *, start: pd.Timestamp, end: pd.Timestamp, config: FeatureConfig
) -> LabelledQueries:
    """Replenish queries whose ``as_of`` is in ``[start, end)``: positives are products the
    customer bought before ``as_of`` and buys again (the rest of the order, or within
    ``replenish_window_days``), other than the context products themselves."""
    queries, bought = _order_queries(
        shop, start=start, end=end, window_days=config.replenish_window_days, prefix="re"
    )
    ctx = queries[[QUERY_ID, CART]].explode(CART).dropna().rename(columns={CART: s.PRODUCT_ID})
    lab = bought.loc[bought[REBUY]].merge(
        ctx.assign(_in_ctx=True), on=[QUERY_ID, s.PRODUCT_ID], how="left"
    )
    lab = lab.loc[lab["_in_ctx"].isna(), [QUERY_ID, s.PRODUCT_ID, REBUY]]
    return _finish(queries, lab, s.REPLENISH)


def upsell_queries(
    shop: Shop, *, start: pd.Timestamp, end: pd.Timestamp, config: FeatureConfig
) -> LabelledQueries:
    """Upsell queries whose ``as_of`` is in ``[start, end)`` (events if present, else purchases)."""
    lines, first = _lines_and_first(shop)
    window = pd.Timedelta(days=config.upsell_window_days)
    prod = shop.products[[s.PRODUCT_ID, s.FAMILY, s.PRICE]]
    if shop.events is not None and len(shop.events):
        ev = shop.events
        ev = ev.loc[
            ev[s.EVENT_TYPE].isin([s.VIEW, s.ADD_TO_CART]) & (ev[s.TS] >= start) & (ev[s.TS] < end)
        ]
        ev = ev.sort_values(s.TS).drop_duplicates([s.CUSTOMER_ID, s.PRODUCT_ID], keep="first")
        anchors = ev[[s.CUSTOMER_ID, s.PRODUCT_ID, s.TS]].merge(prod, on=s.PRODUCT_ID)
        # one query per (customer, anchor, day): the first consideration of A
        anchors = anchors.assign(day=anchors[s.TS].dt.floor("D"))
        anchors = anchors.drop_duplicates([s.CUSTOMER_ID, s.PRODUCT_ID, "day"])
    else:
        anchors = lines.loc[(lines[s.TS] >= start) & (lines[s.TS] < end)]
        anchors = anchors[[s.CUSTOMER_ID, s.PRODUCT_ID, s.TS, s.FAMILY, s.PRICE]]
        anchors = anchors.drop_duplicates([s.CUSTOMER_ID, s.PRODUCT_ID, s.TS])
    anchors = anchors.rename(columns={s.PRODUCT_ID: ANCHOR, s.TS: AS_OF, s.PRICE: "anchor_price"})
    buys = lines.loc[(lines[s.TS] > start) & (lines[s.TS] <= end + window)]
    buys = buys[[s.CUSTOMER_ID, s.PRODUCT_ID, s.TS, s.FAMILY, s.PRICE]]
    pairs = anchors[[s.CUSTOMER_ID, ANCHOR, AS_OF, s.FAMILY, "anchor_price"]].merge(
        buys, on=[s.CUSTOMER_ID, s.FAMILY]
    )
    after = pairs[s.TS] > pairs[AS_OF]
    pairs = pairs.loc[
        after & (pairs[s.TS] <= pairs[AS_OF] + window) & (pairs[s.PRICE] > pairs["anchor_price"])
    ]
    ts_key = pairs[AS_OF].astype("int64") // 10**9
    pairs = pairs.assign(
        **{QUERY_ID: "up-" + pairs[s.CUSTOMER_ID] + "-" + pairs[ANCHOR] + "-" + ts_key.astype(str)}
    )
    queries = pairs.drop_duplicates(QUERY_ID)[[QUERY_ID, s.CUSTOMER_ID, ANCHOR, AS_OF]].copy()
    queries[CART] = [[] for _ in range(len(queries))]
    queries[PLACEMENT] = "product_page"
    labels = pairs[[QUERY_ID, s.PRODUCT_ID]].drop_duplicates()
    return _finish(queries, with_rebuy_flag(labels, queries, first), s.UPSELL)


def _finish(queries: pd.DataFrame, labels: pd.DataFrame, task: str) -> LabelledQueries:
    has = is_in(queries[QUERY_ID], labels[QUERY_ID])
    queries = queries.loc[has].copy()
    queries[TASK] = task
    if ANCHOR not in queries.columns:
        queries[ANCHOR] = None
    cols = [QUERY_ID, s.CUSTOMER_ID, TASK, PLACEMENT, ANCHOR, CART, AS_OF]
    queries = queries[cols].sort_values([AS_OF, QUERY_ID], kind="stable").reset_index(drop=True)
    labels = labels.loc[is_in(labels[QUERY_ID], queries[QUERY_ID])]
    labels = labels.sort_values([QUERY_ID, s.PRODUCT_ID]).reset_index(drop=True)
    return LabelledQueries(queries, labels)

"""What the synthetic shop's customers do, simulated one chunk of customers at a time.

Shopping missions and their orders (anchors, grocery baskets, complements in the same or a
follow-up order), repeat purchase of consumables, returns and the browsing sessions before
orders, including browse-only sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.data.synthetic.arrays import _Collector, _run_starts, _sort_index
from features.data.synthetic.catalog import (
    CATEGORIES,
    COMPLEMENTS,
    N_TIERS,
    PRODUCTS_PER_FAMILY,
    _Catalog,
    _product_index,
)
from features.data.synthetic.personas import _Customers, _draw_customers
from features.data.synthetic.seasonality import DAY_S, _Calendar

# Tier choice: logit(tier) = (TASTE - WEIGHT * price_sensitivity) * (tier - 1).
_TIER_TASTE = 1.5
_TIER_PRICE_WEIGHT = 4.0
_UPGRADE_RATE = 0.6
_DOWNSELL_RATE = 0.25
_MAIN_BRAND_SHARE = 0.6
_COMPATIBLE_FAMILY_SHARE = 0.7
_SAME_TIER_COMPLEMENT_SHARE = 0.5
_FOLLOW_UP_DAYS = (1, 21)
_CROSS_SELL_MULTIPLIER = (0.4, 1.2)  # complement chance x (a + b * cross_sell_propensity)
_PERIOD_SCALE = (0.7, 1.3)  # a repurchase rhythm's period relative to the category's
_PERIOD_JITTER = 0.1  # each repurchase moves by up to this share of the period
_REPEAT_STOP = (0.15, 0.35)  # geometric stop chance per repurchase: a + b * (1 - loyalty)
_RETURN_DAYS = (1, 30)
_GROCERY_EXTRA_LINES = (1.4, 0.4)  # Poisson mean = a + b * (household_size - 1)
_DISCOUNTS = np.array([0.1, 0.15, 0.2, 0.3])
_DISCOUNT_RATE = (0.06, 0.25)  # (normal day, promotion day), times (0.5 + price_sensitivity)

# Sessions and events.
_SESSION_SHARE_GROCERY = 0.6
_SESSION_SHARE_OTHER = 0.9
_COMPARISON_VIEW_SHARE = 0.3
_COMPLEMENT_VIEW_SHARE = 0.5
_MISSED_COMPLEMENT_VIEW_SHARE = 0.25
_FOLLOW_UP_VIEW_SHARE = 0.6
_REPEAT_SESSION_SHARE = 0.3
_BROWSE_PER_MISSION = 0.5
_BROWSE_BASE = 0.3
_BROWSE_EXTRA_VIEWS = 1.0
_BROWSE_SAME_FAMILY_SHARE = 0.6
_BROWSE_ABANDON_SHARE = 0.15
_EVENT_STEP_S = (15, 180)
_VIEW_CODE, _ADD_CODE, _REMOVE_CODE = 0, 1, 2  # positions in schema.EVENT_TYPES


def _draw_tiers(rng: np.random.Generator, price_sensitivity: np.ndarray) -> np.ndarray:
    """Tier (1..3) a customer considers: price-sensitive customers lean to the good tier."""
    slope = _TIER_TASTE - _TIER_PRICE_WEIGHT * price_sensitivity
    logits = slope[:, None] * np.arange(N_TIERS)[None, :]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(price_sensitivity)) * cdf[:, -1]
    return 1 + (u[:, None] >= cdf[:, :-1]).sum(axis=1)


def _draw_brands(rng: np.random.Generator, n: int) -> np.ndarray:
    """Brand slot (0 = the family's main brand, 1 = the other one)."""
    return (rng.random(n) >= _MAIN_BRAND_SHARE).astype(np.int64)


@dataclass(frozen=True)
class _Lines:
    """Order lines of a chunk, sorted by customer, time and order.

    ``order`` numbers the chunk's orders from 0 in that sort order.
    """

    customer: np.ndarray
    product: np.ndarray
    ts: np.ndarray
    order: np.ndarray
    unit_price: np.ndarray
    quantity: np.ndarray
    n_orders: int

    @property
    def n_rows(self) -> int:
        """Number of order lines."""
        return len(self.customer)


@dataclass(frozen=True)
class _Events:
    """Browsing events of a chunk, sorted by customer, session and time.

    ``session`` numbers the chunk's sessions from 0 in that sort order.
    """

    customer: np.ndarray
    product: np.ndarray
    ts: np.ndarray
    event_type: np.ndarray
    session: np.ndarray
    n_sessions: int

    @property
    def n_rows(self) -> int:
        """Number of events."""
        return len(self.customer)


@dataclass(frozen=True)
class _Chunk:
    """Everything simulated for one chunk of customers."""

    customers: _Customers
    lines: _Lines
    events: _Events


def _simulate_chunk(
    rng: np.random.Generator, n: int, catalog: _Catalog, calendar: _Calendar
) -> _Chunk:
    """Simulate ``n`` customers, their order lines and their browsing events.

    Order keys (chunk-local, renumbered when sorted): mission ``m`` is order ``m``, its
    follow-up order ``M + m``, repurchase group ``g`` order ``2M + g``, returns come after.
    Session keys: the same for missions, follow-ups and repurchases, then browse-only sessions.
    """
    cust = _draw_customers(rng, n, catalog, calendar)
    lines = _Collector(customer=np.int32, product=np.int32, ts=np.int64, order=np.int64)
    events = _Collector(session=np.int64, product=np.int32, event_type=np.int8, slot=np.int8)

    missions = _draw_missions(rng, cust, catalog, calendar)
    _add_missions(rng, missions, catalog, lines, events)
    anchors = _add_baskets(rng, missions, cust, catalog, lines, events)
    follow_ts = _add_complements(rng, missions, anchors, cust, catalog, calendar, lines, events)
    repurchases = _add_repurchases(rng, missions.n, cust, catalog, calendar, lines, events)
    order_lines = _finish_lines(
        rng, lines, cust, catalog, calendar, return_key0=2 * missions.n + len(repurchases.ts)
    )
    browse = _add_browse_sessions(
        rng, cust, catalog, calendar, events, key0=2 * missions.n + len(repurchases.ts)
    )
    session_end = np.concatenate([missions.ts, follow_ts, repurchases.ts, browse.ts])
    session_customer = np.concatenate(
        [missions.customer, missions.customer, repurchases.customer, browse.customer]
    )
    browse_events = _finish_events(rng, events, session_end, session_customer, calendar)
    return _Chunk(customers=cust, lines=order_lines, events=browse_events)


@dataclass(frozen=True)
class _Missions:
    """Shopping missions of a chunk: each buys an anchor product, maybe after a session.

    ``considered`` is the tier the customer looked at first; ``tier`` the tier bought (one
    higher on an upgrade). A downsell puts the next tier in the cart, removes it and buys the
    considered one.
    """

    customer: np.ndarray
    ts: np.ndarray
    quarter: np.ndarray
    price_sensitivity: np.ndarray
    category: np.ndarray
    family: np.ndarray
    considered: np.ndarray
    tier: np.ndarray
    brand: np.ndarray
    product: np.ndarray
    upgrade: np.ndarray
    downsell: np.ndarray
    has_session: np.ndarray

    @property
    def n(self) -> int:
        """Number of missions."""
        return len(self.customer)


@dataclass(frozen=True)
class _Sessions:
    """End time and customer of a run of consecutive session keys."""

    ts: np.ndarray
    customer: np.ndarray


def _draw_categories(
    rng: np.random.Generator,
    customer: np.ndarray,
    day: np.ndarray,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
) -> np.ndarray:
    """The category a customer starts from: the favourite, or by persona and season."""
    favorite = rng.random(len(customer)) < cust.favorite_share[customer]
    seasonal = catalog.category_sampler.sample(
        rng, cust.group[customer] * 2 + calendar.is_gift(day)
    )
    return np.where(favorite, cust.favorite[customer], seasonal)


def _draw_missions(
    rng: np.random.Generator, cust: _Customers, catalog: _Catalog, calendar: _Calendar
) -> _Missions:
    """When each mission happens, its category, family, tiers and product."""
    M = int(cust.n_missions.sum())
    customer = np.repeat(np.arange(cust.n), cust.n_missions)
    day = calendar.draw_days(rng, cust.first_day[customer])
    quarter = calendar.quarter_of(day)
    ps = cust.price_sensitivity[customer]
    category = _draw_categories(rng, customer, day, cust, catalog, calendar)
    family = catalog.draw_families(rng, category, quarter)
    considered = _draw_tiers(rng, ps)
    has_next = considered < N_TIERS
    upgrade = has_next & (rng.random(M) < _UPGRADE_RATE * cust.upgrade_propensity[customer])
    downsell = has_next & ~upgrade & (rng.random(M) < _DOWNSELL_RATE * ps)
    tier = considered + upgrade
    brand = _draw_brands(rng, M)
    grocery = catalog.category_is_grocery[category]
    session_share = np.where(grocery, _SESSION_SHARE_GROCERY, _SESSION_SHARE_OTHER)
    return _Missions(
        customer=customer,
        ts=calendar.draw_times(rng, day),
        quarter=quarter,
        price_sensitivity=ps,
        category=category,
        family=family,
        considered=considered,
        tier=tier,
        brand=brand,
        product=_product_index(family, tier, brand),
        upgrade=upgrade,
        downsell=downsell,
        has_session=upgrade | downsell | (rng.random(M) < session_share),
    )


def _add_missions(
    rng: np.random.Generator,
    missions: _Missions,
    catalog: _Catalog,
    lines: _Collector,
    events: _Collector,
) -> None:
    """The anchor line of every mission and its session.

    Session: maybe a view of another family, a view of the considered tier, on an upgrade or
    downsell a view of the next tier (a downsell also adds and removes it), then the bought
    product goes to the cart.
    """
    m = missions
    lines.add(customer=m.customer, product=m.product, ts=m.ts, order=np.arange(m.n))
    sm = np.flatnonzero(m.has_session & (rng.random(m.n) < _COMPARISON_VIEW_SHARE))
    other = catalog.draw_families(rng, m.category[sm], m.quarter[sm])
    compared = _product_index(other, m.considered[sm], m.brand[sm])
    events.add(session=sm, product=compared, event_type=_VIEW_CODE, slot=0)
    sm = np.flatnonzero(m.has_session)
    considered = _product_index(m.family[sm], m.considered[sm], m.brand[sm])
    events.add(session=sm, product=considered, event_type=_VIEW_CODE, slot=1)
    sm = np.flatnonzero(m.upgrade | m.downsell)
    next_tier = _product_index(m.family[sm], m.considered[sm] + 1, m.brand[sm])
    events.add(session=sm, product=next_tier, event_type=_VIEW_CODE, slot=2)
    sm = np.flatnonzero(m.downsell)
    next_tier = _product_index(m.family[sm], m.considered[sm] + 1, m.brand[sm])
    events.add(session=sm, product=next_tier, event_type=_ADD_CODE, slot=3)
    events.add(session=sm, product=next_tier, event_type=_REMOVE_CODE, slot=4)
    sm = np.flatnonzero(m.has_session)
    events.add(session=sm, product=m.product[sm], event_type=_ADD_CODE, slot=5)


@dataclass(frozen=True)
class _Anchors:
    """Lines that can pull complements: mission anchors and grocery basket lines."""

    mission: np.ndarray
    category: np.ndarray
    family: np.ndarray
    tier: np.ndarray


def _add_baskets(
    rng: np.random.Generator,
    missions: _Missions,
    cust: _Customers,
    catalog: _Catalog,
    lines: _Collector,
    events: _Collector,
) -> _Anchors:
    """More grocery lines in grocery missions (bigger households, bigger baskets)."""
    m = missions
    household = cust.household[m.customer]
    mean_extra = _GROCERY_EXTRA_LINES[0] + _GROCERY_EXTRA_LINES[1] * (household - 1)
    n_extra = np.where(catalog.category_is_grocery[m.category], rng.poisson(mean_extra), 0)
    e_m = np.repeat(np.arange(m.n), n_extra)
    category = catalog.grocery_sampler.sample(rng, cust.group[m.customer[e_m]])
    family = catalog.draw_families(rng, category, m.quarter[e_m])
    tier = _draw_tiers(rng, m.price_sensitivity[e_m])
    product = _product_index(family, tier, _draw_brands(rng, len(e_m)))
    lines.add(customer=m.customer[e_m], product=product, ts=m.ts[e_m], order=e_m)
    se = np.flatnonzero(m.has_session[e_m])
    events.add(session=e_m[se], product=product[se], event_type=_ADD_CODE, slot=6)
    return _Anchors(
        mission=np.concatenate([np.arange(m.n), e_m]),
        category=np.concatenate([m.category, category]),
        family=np.concatenate([m.family, family]),
        tier=np.concatenate([m.tier, tier]),
    )


def _add_complements(
    rng: np.random.Generator,
    missions: _Missions,
    anchors: _Anchors,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
    lines: _Collector,
    events: _Collector,
) -> np.ndarray:
    """Planted complements of anchor lines, in the same order or a follow-up order.

    The complement is usually the family compatible with the anchor's family, often at the
    anchor's tier. Bought in the same order it goes to the mission's cart (sometimes after a
    view); bought later it gets a follow-up session. Complements not bought are sometimes
    viewed. One-time customers buy their complements in the same order.

    Returns:
        The follow-up order time of every mission (used or not).
    """
    m = missions
    M = m.n
    follow_ts = m.ts + rng.integers(_FOLLOW_UP_DAYS[0] * DAY_S, _FOLLOW_UP_DAYS[1] * DAY_S, M)
    category_index = {c.name: k for k, c in enumerate(CATEGORIES)}
    for r, rel in enumerate(COMPLEMENTS):
        sel = np.flatnonzero(anchors.category == category_index[rel.category])
        k = len(sel)
        mm = anchors.mission[sel]
        c = m.customer[mm]
        multiplier = (
            _CROSS_SELL_MULTIPLIER[0] + _CROSS_SELL_MULTIPLIER[1] * (cust.cross_sell_propensity[c])
        )
        hit = rng.random(k) < np.minimum(0.95, rel.strength * multiplier)
        same = (rng.random(k) < rel.same_order_share) | cust.one_time[c]
        target = np.full(k, category_index[rel.complement])
        family = np.where(
            rng.random(k) < _COMPATIBLE_FAMILY_SHARE,
            catalog.compatible[anchors.family[sel], r],
            catalog.draw_families(rng, target, m.quarter[mm]),
        )
        tier = np.where(
            rng.random(k) < _SAME_TIER_COMPLEMENT_SHARE,
            anchors.tier[sel],
            _draw_tiers(rng, m.price_sensitivity[mm]),
        )
        prod = _product_index(family, tier, _draw_brands(rng, k))

        now = hit & same
        lines.add(customer=c[now], product=prod[now], ts=m.ts[mm[now]], order=mm[now])
        seen = now & m.has_session[mm]
        viewed = seen & (rng.random(k) < _COMPLEMENT_VIEW_SHARE)
        events.add(session=mm[viewed], product=prod[viewed], event_type=_VIEW_CODE, slot=6)
        events.add(session=mm[seen], product=prod[seen], event_type=_ADD_CODE, slot=7)

        later = hit & ~same & (follow_ts[mm] < calendar.end_s)
        lines.add(
            customer=c[later], product=prod[later], ts=follow_ts[mm[later]], order=M + mm[later]
        )
        viewed = later & (rng.random(k) < _FOLLOW_UP_VIEW_SHARE)
        events.add(session=M + mm[viewed], product=prod[viewed], event_type=_VIEW_CODE, slot=1)
        events.add(session=M + mm[later], product=prod[later], event_type=_ADD_CODE, slot=5)

        missed = ~hit & m.has_session[mm] & (rng.random(k) < _MISSED_COMPLEMENT_VIEW_SHARE)
        events.add(session=mm[missed], product=prod[missed], event_type=_VIEW_CODE, slot=8)
    return follow_ts


def _add_repurchases(
    rng: np.random.Generator,
    n_missions: int,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
    lines: _Collector,
    events: _Collector,
) -> _Sessions:
    """Consumables bought so far start a repurchase rhythm (repeat customers only).

    A rhythm repeats the same product every category period (scaled per rhythm, with
    jitter) for a geometric number of times, longer for loyal customers. Repurchases of one
    customer on one day share an order; some orders have a cart session.

    Returns:
        End time and customer of every repurchase order (session keys ``2M + g``).
    """
    customer = lines.peek("customer")
    product = lines.peek("product")
    ts = lines.peek("ts")
    category = catalog.product_category(product)
    loyalty = cust.repeat_loyalty[customer]
    starts = np.flatnonzero(
        catalog.category_is_consumable[category]
        & ~cust.one_time[customer]
        & (rng.random(len(product)) < catalog.category_repeat_prob[category] * loyalty)
    )
    period = catalog.category_period_s[category[starts]] * rng.uniform(
        _PERIOD_SCALE[0], _PERIOD_SCALE[1], len(starts)
    )
    room = (calendar.end_s - 1 - ts[starts]) // period
    stop = _REPEAT_STOP[0] + _REPEAT_STOP[1] * (1.0 - loyalty[starts])
    n_rep = np.minimum(room, rng.geometric(stop)).astype(np.int64)
    src = np.repeat(starts, n_rep)
    k = np.arange(len(src)) - np.repeat(np.cumsum(n_rep) - n_rep, n_rep) + 1
    period_src = np.repeat(period, n_rep)
    jitter = rng.uniform(-_PERIOD_JITTER, _PERIOD_JITTER, len(src)) * period_src
    r_ts = (ts[src] + k * period_src + jitter).astype(np.int64)
    keep = r_ts < calendar.end_s
    src, r_ts = src[keep], r_ts[keep]

    r_customer = customer[src].astype(np.int64)
    day = calendar.day_of(r_ts) + calendar.burn_in
    day_key = r_customer * (calendar.burn_in + calendar.days) + day
    idx = _sort_index(day_key, r_ts - calendar.start_s + calendar.burn_in * DAY_S)
    first = _run_starts(day_key[idx])
    group = np.empty(len(idx), dtype=np.int64)
    group[idx] = np.cumsum(first) - 1
    g_ts = r_ts[idx[first]]
    key = 2 * n_missions + group
    lines.add(customer=r_customer, product=product[src], ts=g_ts[group], order=key)
    sr = np.flatnonzero((rng.random(len(g_ts)) < _REPEAT_SESSION_SHARE)[group])
    events.add(session=key[sr], product=product[src[sr]], event_type=_ADD_CODE, slot=5)
    return _Sessions(ts=g_ts, customer=r_customer[idx[first]])


def _add_browse_sessions(
    rng: np.random.Generator,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
    events: _Collector,
    *,
    key0: int,
) -> _Sessions:
    """Browse-only sessions: views in one category, sometimes an abandoned cart.

    Returns:
        End time and customer of every browse session (session keys ``key0 + b``).
    """
    n_browse = rng.poisson(_BROWSE_PER_MISSION * cust.n_missions + _BROWSE_BASE)
    B = int(n_browse.sum())
    customer = np.repeat(np.arange(cust.n), n_browse)
    day = calendar.draw_days(rng, np.maximum(cust.first_day[customer], 0))
    quarter = calendar.quarter_of(day)
    category = _draw_categories(rng, customer, day, cust, catalog, calendar)
    family = catalog.draw_families(rng, category, quarter)

    n_views = 1 + rng.poisson(_BROWSE_EXTRA_VIEWS, B)
    first_view = np.cumsum(n_views) - n_views
    v_b = np.repeat(np.arange(B), n_views)
    v_slot = np.minimum(np.arange(len(v_b)) - np.repeat(first_view, n_views), 49)
    v_family = np.where(
        rng.random(len(v_b)) < _BROWSE_SAME_FAMILY_SHARE,
        family[v_b],
        catalog.draw_families(rng, category[v_b], quarter[v_b]),
    )
    v_tier = _draw_tiers(rng, cust.price_sensitivity[customer[v_b]])
    v_prod = _product_index(v_family, v_tier, _draw_brands(rng, len(v_b)))
    events.add(session=key0 + v_b, product=v_prod, event_type=_VIEW_CODE, slot=v_slot)
    ab = np.flatnonzero(rng.random(B) < _BROWSE_ABANDON_SHARE)
    abandoned = v_prod[first_view[ab]]
    events.add(session=key0 + ab, product=abandoned, event_type=_ADD_CODE, slot=50)
    events.add(session=key0 + ab, product=abandoned, event_type=_REMOVE_CODE, slot=51)
    return _Sessions(ts=calendar.draw_times(rng, day), customer=customer)


def _finish_lines(
    rng: np.random.Generator,
    lines: _Collector,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
    *,
    return_key0: int,
) -> _Lines:
    """Deduplicate, price, add returns, sort and number the orders of a chunk's lines."""
    customer = lines.pop("customer")
    product = lines.pop("product")
    ts = lines.pop("ts")
    order = lines.pop("order")

    # Only the period (the burn-in seeded rhythms), one line per product and order.
    inside = ts >= calendar.start_s
    customer, product, ts, order = customer[inside], product[inside], ts[inside], order[inside]
    idx = _sort_index(order, product)
    order_product = order[idx] * PRODUCTS_PER_FAMILY * len(catalog.family_category) + product[idx]
    keep = np.ones(len(idx), dtype=bool)
    keep[idx[~_run_starts(order_product)]] = False
    customer, product, ts, order = customer[keep], product[keep], ts[keep], order[keep]

    # Quantity and price paid.
    n = len(product)
    category = catalog.product_category(product)
    bulk = rng.poisson(0.2 + 0.1 * cust.household[customer])
    quantity = np.where(catalog.category_is_consumable[category], 1 + bulk, 1)
    promo = calendar.is_promo(calendar.day_of(ts))
    discount_rate = np.where(promo, _DISCOUNT_RATE[1], _DISCOUNT_RATE[0])
    discounted = rng.random(n) < discount_rate * (0.5 + cust.price_sensitivity[customer])
    discount = np.where(discounted, _DISCOUNTS[rng.integers(0, len(_DISCOUNTS), n)], 0.0)
    unit_price = np.maximum(np.round(catalog.price[product] * (1.0 - discount), 2), 0.01)

    # Returns of earlier lines (repeat customers only), each its own order.
    returned = np.flatnonzero(
        ~cust.one_time[customer] & (rng.random(n) < catalog.category_return_prob[category])
    )
    ret_ts = ts[returned] + rng.integers(
        _RETURN_DAYS[0] * DAY_S, _RETURN_DAYS[1] * DAY_S, len(returned)
    )
    returned, ret_ts = returned[ret_ts < calendar.end_s], ret_ts[ret_ts < calendar.end_s]
    customer = np.concatenate([customer, customer[returned]])
    product = np.concatenate([product, product[returned]])
    ts = np.concatenate([ts, ret_ts])
    order = np.concatenate([order, return_key0 + np.arange(len(returned))])
    unit_price = np.concatenate([unit_price, unit_price[returned]])
    quantity = np.concatenate([quantity, -quantity[returned]])

    # Orders by customer, time and key (all lines of an order share customer and time), then
    # lines by order and product.
    present = np.zeros(int(order.max()) + 1 if len(order) else 0, dtype=bool)
    present[order] = True
    dense = np.cumsum(present) - 1
    order = dense[order]
    n_orders = int(present.sum())
    order_customer = np.zeros(n_orders, dtype=np.int64)
    order_customer[order] = customer
    order_ts = np.zeros(n_orders, dtype=np.int64)
    order_ts[order] = ts - calendar.start_s
    rank = np.empty(n_orders, dtype=np.int64)
    rank[_sort_index(order_customer, order_ts)] = np.arange(n_orders)
    order = rank[order]
    idx = _sort_index(order, product)
    return _Lines(
        customer=customer[idx],
        product=product[idx],
        ts=ts[idx],
        order=order[idx],
        unit_price=unit_price[idx],
        quantity=quantity[idx],
        n_orders=n_orders,
    )


def _finish_events(
    rng: np.random.Generator,
    events: _Collector,
    session_end: np.ndarray,
    session_customer: np.ndarray,
    calendar: _Calendar,
) -> _Events:
    """Time, filter, sort and number the sessions of a chunk's events.

    Events of a session are spaced by a per-session step and end one step before the
    session's end time (the order's timestamp), so each precedes the order it leads to.
    """
    session = events.pop("session")
    slot = events.pop("slot")
    idx = _sort_index(session, slot)
    del slot
    session = session[idx]
    product = events.pop("product")[idx]
    event_type = events.pop("event_type")[idx]
    n = len(session)
    first = np.flatnonzero(_run_starts(session))
    size = np.diff(np.append(first, n))
    rank = np.arange(n) - np.repeat(first, size)
    count = np.repeat(size, size)
    step = rng.integers(_EVENT_STEP_S[0], _EVENT_STEP_S[1], len(session_end))
    ts = session_end[session] - (count - rank) * step[session]

    keep = ts >= calendar.start_s
    session, product, event_type, ts, rank = (
        session[keep], product[keep], event_type[keep], ts[keep], rank[keep]
    )  # fmt: skip
    # Sessions by customer, end time and key, then events by session and rank. ``session`` is
    # still sorted, so its runs are the used sessions in key order.
    starts = _run_starts(session)
    dense = np.cumsum(starts) - 1
    used = session[starts]
    n_sessions = len(used)
    order = np.empty(n_sessions, dtype=np.int64)
    order[_sort_index(session_customer[used], session_end[used] - calendar.start_s)] = np.arange(
        n_sessions
    )
    session = order[dense]
    idx = _sort_index(session, rank)
    return _Events(
        customer=session_customer[used][dense[idx]],
        product=product[idx],
        ts=ts[idx],
        event_type=event_type[idx],
        session=session[idx],
        n_sessions=n_sessions,
    )

"""A closed-loop simulator: synthetic customers use the real API and answer from the planted truth.

``simulate(url, shop_dir, visits=N, seed=S)`` plays ``N`` visits against a running ``xsell serve``
over HTTP. A visit draws a customer (weighted by their number of orders), a placement and a
context that customer would plausibly have, asks ``POST /recommend``, reports the impression,
decides per shown item whether the customer clicks and buys, reports the clicks (``POST
/feedback``) and posts the resulting order as purchase lines (``POST /events``; recommended
items carry the ``recommendation_id``). What the customers buy feeds back into the service's
live state, so later answers see it: that is the closed loop.

**The response model is the synthetic shop's behaviour model** (:mod:`features.data.synthetic`),
read from the shop's planted truth (``truth/complements``, ``truth/customer_params``), its
products table (category, family, brand, tier, price, is_consumable) and the generator's own
constants. It never looks at which variant or policy served the list:

- **cross-sell**: a product of a planted complement category of a context product is bought
  with the relation's chance ``strength * (0.4 + 1.2 * cross_sell_propensity)`` (after the
  purchase, post purchase, only the follow-up share), scaled by how well its tier fits (the
  anchor's tier, or the tier the customer's price sensitivity favours);
- **upsell**: the next tier of the viewed product's family is taken with the generator's
  upgrade chance ``0.6 * upgrade_propensity`` (same brand; the other brand half as often); two
  tiers up only as far as the customer's tier preference favours the higher tier;
- **replenish**: a consumable the customer bought before is bought again with the chance that
  one of their purchases started a repurchase rhythm (category repeat chance x loyalty), that
  the rhythm goes on, and how due it is (days since the last purchase against the category's
  period);
- anything else: a low base rate (higher in the customer's favourite category).

The customer clicks with ``min(0.95, 0.04 + 1.5 * p_buy)`` and buys a clicked item with
``p_buy / p_click``, at most one item per category per visit. The order holds the items bought
and: at the cart and checkout the cart; on a product page the viewed product (replaced by an
upsell bought; bought alone with :data:`ANCHOR_CONVERSION`); post purchase nothing else.

The shop's clock during the simulation is the served snapshot's cut-off (``GET /model``):
customers' state (what they bought, when, their last order) is their history before it plus
what they bought earlier in the simulation. Timestamps sent to the server are left to the
server's clock (its recommendations are stamped with it too).

Determinism: the customers of all visits are drawn up front from ``seed``; each visit has its
own generator ``default_rng([seed, stream, visit])``, and a customer's visits run in order in
one lane (``concurrency`` lanes), so the same server answers give the same visits, clicks and
orders whatever the concurrency.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from features.data import schema as s
from features.data.io import Shop, load_shop, read_table
from features.data.synthetic import (
    CATEGORIES,
    N_TIERS,
    TRUTH_COMPLEMENTS,
    TRUTH_CUSTOMER_PARAMS,
    TRUTH_DIR,
    ComplementSpec,
)
from features.data.synthetic.behaviour import (
    _CROSS_SELL_MULTIPLIER,
    _PERIOD_SCALE,
    _REPEAT_STOP,
    _SAME_TIER_COMPLEMENT_SHARE,
    _TIER_PRICE_WEIGHT,
    _TIER_TASTE,
    _UPGRADE_RATE,
)
from online.records import CLICK, IMPRESSION, PURCHASE

PRODUCT_PAGE, CART, CHECKOUT, POST_PURCHASE = s.PLACEMENTS
# Share of visits per placement.
PLACEMENT_SHARES: Mapping[str, float] = {
    PRODUCT_PAGE: 0.4,
    CART: 0.25,
    CHECKOUT: 0.15,
    POST_PURCHASE: 0.2,
}
# Response model (beyond the generator's constants, imported above).
BASE_BUY = 0.012  # an item with no planted reason to buy it
FAVORITE_LIFT = 2.0  # base rate x (1 + lift * favorite_share) in the favourite category
CLICK_BASE = 0.04
CLICK_LIFT = 1.5  # click = min(CLICK_MAX, base + lift * p_buy); needs lift >= 1
CLICK_MAX = 0.95
MAX_BUY = 0.95
OTHER_BRAND_UPGRADE = 0.5  # the generator upgrades within the brand; the other brand: half
ANCHOR_CONVERSION = 0.3  # product page: the viewed product bought when nothing else is
DUE_FROM = _PERIOD_SCALE[0]  # a rhythm's period is 0.7-1.3 x the category's: due from 0.7 on
LAPSED_AFTER = 1.5  # periods without a repurchase after which the rhythm has likely stopped
LAPSE_HALF_LIFE = 1.0  # periods
MIN_DUE = 0.1
EXTRA_CART_P = 0.35  # cart / checkout: 1 + Binomial(2, p) products
BULK_QUANTITY = (0.2, 0.1)  # consumables: 1 + Poisson(a + b * household_size)

_PLAN_STREAM = 0x5EED
_VISIT_STREAM = 0x7151
_TIMEOUT_S = 30.0
SHOW_ERRORS = 5
MAX_CART = 200  # products a request's cart may hold (the API's limit)

Echo = Callable[[str], None]


class SimulationError(RuntimeError):
    """The simulation cannot start: the API is unreachable or the shop has no planted truth."""


# --------------------------------------------------------------------------- planted truth


def tier_preference(price_sensitivity: float) -> np.ndarray:
    """P(tier 1..3) a customer considers: the generator's tier logit (``_draw_tiers``)."""
    slope = _TIER_TASTE - _TIER_PRICE_WEIGHT * price_sensitivity
    logits = slope * np.arange(N_TIERS)
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


@dataclass(frozen=True)
class CustomerParams:
    """A customer's planted latent parameters (``truth/customer_params``)."""

    price_sensitivity: float
    upgrade_propensity: float
    cross_sell_propensity: float
    repeat_loyalty: float
    favorite_category: str
    favorite_share: float
    household_size: float = 2.0


@dataclass(frozen=True)
class Product:
    """What the response model reads of a product (the products table)."""

    product_id: str
    category: str
    family: str
    brand: str
    tier: int
    price: float
    is_consumable: bool
    in_stock: bool


@dataclass(frozen=True)
class CategoryRhythm:
    """A consumable category's repurchase rhythm (the catalog's ``CategorySpec``)."""

    period_days: float
    repeat_prob: float


@dataclass(frozen=True)
class Truth:
    """The synthetic shop's planted behaviour, as the simulator reads it.

    Attributes:
        products: Product id -> product.
        complements: Anchor category -> its planted complement relations.
        customers: Customer id -> planted parameters.
        rhythms: Consumable category -> repurchase rhythm.
    """

    products: Mapping[str, Product]
    complements: Mapping[str, tuple[ComplementSpec, ...]]
    customers: Mapping[str, CustomerParams]
    rhythms: Mapping[str, CategoryRhythm]

    @classmethod
    def from_shop(cls, shop: Shop, shop_dir: Path) -> Truth:
        """Read the planted truth of a synthetic shop folder (``truth/`` next to the tables).

        Raises:
            SimulationError: The folder has no planted truth (not a synthetic shop).
        """
        complements = read_table(shop_dir, f"{TRUTH_DIR}/{TRUTH_COMPLEMENTS}")
        params = read_table(shop_dir, f"{TRUTH_DIR}/{TRUTH_CUSTOMER_PARAMS}")
        if complements is None or params is None:
            raise SimulationError(
                f"{shop_dir} has no planted truth ({TRUTH_DIR}/{TRUTH_COMPLEMENTS}, "
                f"{TRUTH_DIR}/{TRUTH_CUSTOMER_PARAMS}): simulate needs a synthetic shop "
                "(xsell data generate)"
            )
        relations: dict[str, list[ComplementSpec]] = {}
        for row in complements.itertuples(index=False):
            spec = ComplementSpec(
                category=str(row.category),
                complement=str(row.complement_category),
                strength=float(row.strength),
                same_order_share=float(row.same_order_share),
            )
            relations.setdefault(spec.category, []).append(spec)
        products = shop.products
        tier = products[s.TIER] if s.TIER in products.columns else pd.Series(1, products.index)
        brand = products[s.BRAND] if s.BRAND in products.columns else products[s.FAMILY]
        by_id = {
            pid: Product(str(pid), str(cat), str(fam), str(br), int(t), float(p), bool(c), bool(i))
            for pid, cat, fam, br, t, p, c, i in zip(
                products[s.PRODUCT_ID],
                products[s.CATEGORY],
                products[s.FAMILY],
                brand,
                tier.fillna(1),
                products[s.PRICE],
                products[s.IS_CONSUMABLE],
                products[s.IN_STOCK],
                strict=True,
            )
        }
        household = {}
        if "household_size" in shop.customers.columns:
            sizes = pd.to_numeric(shop.customers["household_size"], errors="coerce").fillna(2.0)
            household = dict(zip(shop.customers[s.CUSTOMER_ID], sizes, strict=True))
        customers = {
            str(row.customer_id): CustomerParams(
                price_sensitivity=float(row.price_sensitivity),
                upgrade_propensity=float(row.upgrade_propensity),
                cross_sell_propensity=float(row.cross_sell_propensity),
                repeat_loyalty=float(row.repeat_loyalty),
                favorite_category=str(row.favorite_category),
                favorite_share=float(row.favorite_share),
                household_size=float(household.get(row.customer_id, 2.0)),
            )
            for row in params.itertuples(index=False)
        }
        rhythms = {
            c.name: CategoryRhythm(c.period_days, c.repeat_prob)
            for c in CATEGORIES
            if c.is_consumable
        }
        return cls(
            products=by_id,
            complements={k: tuple(v) for k, v in relations.items()},
            customers=customers,
            rhythms=rhythms,
        )


# --------------------------------------------------------------------------- customer state


@dataclass
class Bought:
    """How often (orders) and when last a customer bought a product."""

    n_orders: int
    last: pd.Timestamp


@dataclass
class CustomerState:
    """What a customer has bought so far (history before the clock, then the simulation).

    Mutated only by the lane that plays this customer's visits.
    """

    customer_id: str
    bought: dict[str, Bought] = field(default_factory=dict)
    last_order: list[str] = field(default_factory=list)
    line_categories: list[str] = field(default_factory=list)
    n_orders: int = 0

    def days_since(self, product_id: str, now: pd.Timestamp) -> float | None:
        """Days since the customer last bought ``product_id`` (None: never)."""
        got = self.bought.get(product_id)
        return None if got is None else (now - got.last) / pd.Timedelta(days=1)

    def record_order(
        self, products: Sequence[str], categories: Sequence[str], now: pd.Timestamp
    ) -> None:
        """Add one order of ``products`` bought at ``now``."""
        for pid in dict.fromkeys(products):
            got = self.bought.get(pid)
            self.bought[pid] = Bought(1 if got is None else got.n_orders + 1, now)
        self.last_order = list(products)
        self.line_categories.extend(categories)
        self.n_orders += 1


def customer_states(shop: Shop, truth: Truth, now: pd.Timestamp) -> dict[str, CustomerState]:
    """Every customer's purchase state from the history strictly before ``now``.

    Returns:
        Customer id -> state, for the customers with at least one order before ``now``.
    """
    lines = shop.purchases
    lines = lines.loc[(lines[s.TS] < now) & (lines[s.QUANTITY] > 0)]
    lines = lines.sort_values([s.CUSTOMER_ID, s.TS, s.ORDER_ID], kind="stable")
    out: dict[str, CustomerState] = {}
    counted: dict[tuple[str, str], str] = {}  # (customer, product) -> last order counted
    current: dict[str, str] = {}  # customer -> the order their latest line belongs to
    for cid, pid, oid, ts in zip(
        lines[s.CUSTOMER_ID], lines[s.PRODUCT_ID], lines[s.ORDER_ID], lines[s.TS], strict=True
    ):
        state = out.get(cid)
        if state is None:
            state = out[cid] = CustomerState(cid)
        if current.get(cid) != oid:  # a new order (lines of one order are contiguous)
            current[cid] = oid
            state.n_orders += 1
            state.last_order = []
        state.last_order.append(pid)
        state.line_categories.append(truth.products[pid].category)
        if counted.get((cid, pid)) != oid:
            counted[(cid, pid)] = oid
            got = state.bought.get(pid)
            state.bought[pid] = Bought(1 if got is None else got.n_orders + 1, pd.Timestamp(ts))
    return out


# --------------------------------------------------------------------------- response model


@dataclass(frozen=True)
class Context:
    """Where a visit happens: the placement, the viewed product and the cart (or last order)."""

    placement: str
    product_id: str | None
    cart: tuple[str, ...]

    @property
    def products(self) -> tuple[str, ...]:
        """Every product of the context (the viewed one first)."""
        head = () if self.product_id is None else (self.product_id,)
        return head + tuple(p for p in self.cart if p != self.product_id)


# The planted chance of buying a product shown in one task's list.
_TaskResponse = Callable[[CustomerParams, CustomerState, Context, Product, pd.Timestamp], float]

# An unknown customer: the population's typical parameters, no favourite category.
TYPICAL_CUSTOMER = CustomerParams(
    price_sensitivity=0.5,
    upgrade_propensity=0.35,
    cross_sell_propensity=0.5,
    repeat_loyalty=0.67,
    favorite_category="",
    favorite_share=0.0,
)


class ResponseModel:
    """Buy and click probabilities of a shown item, from the planted truth."""

    def __init__(self, truth: Truth) -> None:
        self.truth = truth
        self._by_task: dict[str, _TaskResponse] = {
            s.CROSS_SELL: self._cross_sell,
            s.UPSELL: self._upsell,
            s.REPLENISH: self._replenish,
        }

    def params(self, customer_id: str) -> CustomerParams:
        """The customer's planted parameters (the population's typical values if unknown)."""
        return self.truth.customers.get(customer_id, TYPICAL_CUSTOMER)

    def buy_probability(
        self,
        task: str,
        customer: CustomerState,
        context: Context,
        product_id: str,
        now: pd.Timestamp,
    ) -> float:
        """Chance that ``customer`` buys ``product_id`` shown in ``task``'s list at ``context``."""
        product = self.truth.products.get(product_id)
        if product is None or not product.in_stock:
            return 0.0
        params = self.params(customer.customer_id)
        base = self.base_rate(params, product)
        planted = (
            self._by_task[task](params, customer, context, product, now)
            if task in self._by_task
            else 0.0
        )
        return float(min(MAX_BUY, max(base, planted)))

    @staticmethod
    def click_probability(p_buy: float) -> float:
        """Chance of a click on an item bought with ``p_buy`` (always >= ``p_buy``)."""
        return min(CLICK_MAX, max(p_buy, CLICK_BASE + CLICK_LIFT * p_buy))

    @staticmethod
    def base_rate(params: CustomerParams, product: Product) -> float:
        """An item with no planted reason: low, higher in the customer's favourite category."""
        lift = (
            FAVORITE_LIFT * params.favorite_share
            if product.category == params.favorite_category
            else 0.0
        )
        return BASE_BUY * (1.0 + lift)

    def _cross_sell(
        self,
        params: CustomerParams,
        customer: CustomerState,
        context: Context,
        product: Product,
        now: pd.Timestamp,
    ) -> float:
        """A planted complement of a context product: the relation's chance x tier fit."""
        preference = tier_preference(params.price_sensitivity)
        multiplier = (
            _CROSS_SELL_MULTIPLIER[0] + _CROSS_SELL_MULTIPLIER[1] * params.cross_sell_propensity
        )
        best = 0.0
        for pid in context.products:
            anchor = self.truth.products.get(pid)
            if anchor is None:
                continue
            for rel in self.truth.complements.get(anchor.category, ()):
                if rel.complement != product.category:
                    continue
                hit = min(0.95, rel.strength * multiplier)
                if context.placement == POST_PURCHASE:  # the same-order share is gone
                    hit = hit * (1.0 - rel.same_order_share) / (1.0 - hit * rel.same_order_share)
                fit = _SAME_TIER_COMPLEMENT_SHARE * (np.arange(1, N_TIERS + 1) == anchor.tier)
                fit = fit + (1.0 - _SAME_TIER_COMPLEMENT_SHARE) * preference
                tier = min(max(product.tier, 1), N_TIERS)
                best = max(best, hit * float(fit[tier - 1] / fit.max()))
        return best

    def _upsell(
        self,
        params: CustomerParams,
        customer: CustomerState,
        context: Context,
        product: Product,
        now: pd.Timestamp,
    ) -> float:
        """The next tier of the viewed product's family: the generator's upgrade chance."""
        anchor = None if context.product_id is None else self.truth.products.get(context.product_id)
        if anchor is None or product.family != anchor.family or product.tier <= anchor.tier:
            return 0.0
        chance = _UPGRADE_RATE * params.upgrade_propensity
        steps = product.tier - anchor.tier
        if steps > 1:  # beyond the one step the generator takes: as far as the taste favours it
            preference = tier_preference(params.price_sensitivity)
            top = min(product.tier, N_TIERS) - 1
            chance *= min(1.0, float(preference[top] / preference[top - 1])) ** (steps - 1)
        if product.brand != anchor.brand:
            chance *= OTHER_BRAND_UPGRADE
        return chance

    def _replenish(
        self,
        params: CustomerParams,
        customer: CustomerState,
        context: Context,
        product: Product,
        now: pd.Timestamp,
    ) -> float:
        """A consumable bought before: a running repurchase rhythm, as due as it is."""
        rhythm = self.truth.rhythms.get(product.category)
        got = customer.bought.get(product.product_id)
        if rhythm is None or got is None or not product.is_consumable:
            return 0.0
        started = 1.0 - (1.0 - rhythm.repeat_prob * params.repeat_loyalty) ** got.n_orders
        goes_on = 1.0 - (_REPEAT_STOP[0] + _REPEAT_STOP[1] * (1.0 - params.repeat_loyalty))
        days = max(0.0, (now - got.last) / pd.Timedelta(days=1))
        return started * goes_on * due_factor(days / rhythm.period_days)


def due_factor(periods: float) -> float:
    """How due a repurchase is after ``periods`` category periods without one.

    0 just after the purchase, rising to 1 from :data:`DUE_FROM` periods, then halving every
    :data:`LAPSE_HALF_LIFE` periods after :data:`LAPSED_AFTER` (the rhythm has likely stopped),
    never below :data:`MIN_DUE` once due.
    """
    if periods < DUE_FROM:
        return (periods / DUE_FROM) ** 2
    if periods <= LAPSED_AFTER:
        return 1.0
    return max(MIN_DUE, 0.5 ** ((periods - LAPSED_AFTER) / LAPSE_HALF_LIFE))


# --------------------------------------------------------------------------- visits


@dataclass(frozen=True)
class ShownItem:
    """One item of a served list."""

    task: str
    product_id: str
    price: float
    position: int


@dataclass(frozen=True)
class Decision:
    """What the customer did with one shown item."""

    item: ShownItem
    p_buy: float
    clicked: bool
    bought: bool
    quantity: float


@dataclass(frozen=True)
class OrderLine:
    """One line of the order a visit ends with."""

    product_id: str
    unit_price: float
    quantity: float
    recommendation_id: str | None


def shown_items(answer: Mapping[str, Any]) -> list[ShownItem]:
    """The items of a ``POST /recommend`` answer, task by task, in list order."""
    out = []
    for task in (s.CROSS_SELL, s.UPSELL, s.REPLENISH):
        for i, item in enumerate(answer.get(task) or [], start=1):
            out.append(
                ShownItem(
                    task,
                    str(item["product_id"]),
                    float(item["price"]),
                    int(item.get("position", i)),
                )
            )
    return out


class Shopper:
    """Draws visits and answers recommendations for the customers of one synthetic shop."""

    def __init__(self, truth: Truth, states: dict[str, CustomerState], now: pd.Timestamp) -> None:
        self.truth = truth
        self.model = ResponseModel(truth)
        self.states = states
        self.now = now
        self._customers = sorted(states)
        weights = np.array([states[c].n_orders for c in self._customers], dtype=float)
        self._customer_p = weights / weights.sum() if weights.sum() > 0 else weights
        in_stock = [p for p in truth.products.values() if p.in_stock]
        sold: Counter[str] = Counter()
        for state in states.values():
            sold.update({p: b.n_orders for p, b in state.bought.items()})
        self._families: dict[str, tuple[list[str], np.ndarray]] = {}
        self._products: dict[tuple[str, int], tuple[list[str], np.ndarray]] = {}
        fam_sold: Counter[str] = Counter()
        fam_category: dict[str, str] = {}
        by_family_tier: dict[tuple[str, int], list[str]] = {}
        for p in in_stock:
            fam_sold[p.family] += sold.get(p.product_id, 0)
            fam_category[p.family] = p.category
            by_family_tier.setdefault((p.family, p.tier), []).append(p.product_id)
        by_category: dict[str, list[str]] = {}
        for fam in sorted(fam_category):
            by_category.setdefault(fam_category[fam], []).append(fam)
        for cat, fams in by_category.items():
            w = np.array([fam_sold[f] + 1.0 for f in fams])
            self._families[cat] = (fams, w / w.sum())
        for key, pids in by_family_tier.items():
            pids = sorted(pids)
            w = np.array([sold.get(p, 0) + 1.0 for p in pids])
            self._products[key] = (pids, w / w.sum())

    def draw_customers(self, rng: np.random.Generator, n: int) -> list[str]:
        """``n`` visiting customers, weighted by their number of orders."""
        if not self._customers:
            raise SimulationError("no customer has an order before the snapshot's cut-off")
        idx = rng.choice(len(self._customers), size=n, p=self._customer_p)
        return [self._customers[i] for i in idx]

    def _draw_product(self, rng: np.random.Generator, customer: str) -> str | None:
        """A product the customer would look at: a category they shop (the favourite with
        their favourite share), a family by popularity, their tier, a brand by popularity."""
        params = self.model.params(customer)
        cats = self.states[customer].line_categories
        if (
            rng.random() < params.favorite_share or not cats
        ) and params.favorite_category in self._families:
            category = params.favorite_category
        elif cats:
            category = cats[int(rng.integers(len(cats)))]
        else:
            return None
        if category not in self._families:
            return None
        fams, fam_p = self._families[category]
        family = fams[int(rng.choice(len(fams), p=fam_p))]
        preference = tier_preference(params.price_sensitivity)
        tier = 1 + int(rng.choice(N_TIERS, p=preference))
        for t in (tier, *range(1, N_TIERS + 1)):  # that tier, else any in stock
            if (family, t) in self._products:
                pids, p = self._products[(family, t)]
                return pids[int(rng.choice(len(pids), p=p))]
        return None

    def draw_context(self, rng: np.random.Generator, customer: str) -> Context:
        """A placement and a context the customer would plausibly have."""
        names = list(PLACEMENT_SHARES)
        shares = np.array([PLACEMENT_SHARES[n] for n in names])
        placement = names[int(rng.choice(len(names), p=shares / shares.sum()))]
        state = self.states[customer]
        if placement == POST_PURCHASE and state.last_order:
            return Context(placement, None, tuple(state.last_order[:MAX_CART]))
        if placement == POST_PURCHASE:
            placement = CART
        first = self._draw_product(rng, customer)
        if first is None:  # nothing to look at: their last order's page
            first = state.last_order[0]
        if placement == PRODUCT_PAGE:
            return Context(placement, first, ())
        cart = [first]
        families = {self.truth.products[first].family}
        for _ in range(int(rng.binomial(2, EXTRA_CART_P))):
            extra = self._draw_product(rng, customer)
            if extra is not None and self.truth.products[extra].family not in families:
                cart.append(extra)
                families.add(self.truth.products[extra].family)
        return Context(placement, None, tuple(cart))

    def decide(
        self, rng: np.random.Generator, customer: str, context: Context, items: Sequence[ShownItem]
    ) -> list[Decision]:
        """Clicks and purchases of the shown items (at most one bought per category; an upsell
        bought ends the upsell list)."""
        state = self.states[customer]
        params = self.model.params(customer)
        u_click = rng.random(len(items))
        u_buy = rng.random(len(items))
        u_qty = rng.random(len(items))
        taken: set[str] = set()
        upgraded = False
        out = []
        for i, item in enumerate(items):
            p_buy = self.model.buy_probability(item.task, state, context, item.product_id, self.now)
            p_click = self.model.click_probability(p_buy)
            product = self.truth.products.get(item.product_id)
            clicked = bool(u_click[i] < p_click)
            bought = clicked and bool(u_buy[i] < (p_buy / p_click if p_click > 0 else 0.0))
            if product is None or product.category in taken or (item.task == s.UPSELL and upgraded):
                bought = False
            quantity = 1.0
            if bought and product is not None:
                taken.add(product.category)
                upgraded = upgraded or item.task == s.UPSELL
                if product.is_consumable:
                    mean = BULK_QUANTITY[0] + BULK_QUANTITY[1] * params.household_size
                    quantity = 1.0 + _poisson_quantile(mean, float(u_qty[i]))
            out.append(Decision(item, p_buy, clicked, bought, quantity))
        return out

    def order(
        self, rng: np.random.Generator, context: Context, decisions: Sequence[Decision], rec_id: str
    ) -> list[OrderLine]:
        """The order the visit ends with (empty: no order)."""
        bought = [d for d in decisions if d.bought]
        lines = [OrderLine(d.item.product_id, d.item.price, d.quantity, rec_id) for d in bought]
        convert = rng.random() < ANCHOR_CONVERSION
        if context.placement in (CART, CHECKOUT):
            head = list(context.cart)
        elif context.placement == PRODUCT_PAGE and context.product_id is not None:
            upgraded = any(d.item.task == s.UPSELL for d in bought)
            head = [] if upgraded or not (bought or convert) else [context.product_id]
        else:
            head = []
        shown = {line.product_id for line in lines}
        context_lines = [
            OrderLine(p, self.truth.products[p].price, 1.0, None)
            for p in head
            if p in self.truth.products and p not in shown
        ]
        return context_lines + lines


def _poisson_quantile(mean: float, u: float) -> float:
    """The ``u`` quantile of Poisson(``mean``) (one uniform per draw keeps visits aligned)."""
    k, p = 0, math.exp(-mean)
    cdf = p
    while u > cdf and k < 50:
        k += 1
        p *= mean / k
        cdf += p
    return float(k)


# --------------------------------------------------------------------------- summary


@dataclass
class VariantCounts:
    """What the visits served by one variant did.

    Attributes:
        visits: Visits (for the totals: every visit, answered or not).
        recommendations: ``POST /recommend`` answers.
        items_shown: Items in those answers.
        impressions: Answers with at least one item, reported as an impression.
        clicks: Items clicked.
        purchases: Recommended items bought (order lines with the recommendation id).
        orders: Orders posted.
        revenue: Revenue of the recommended items bought.
        order_revenue: Revenue of every order line (context products included).
        errors: Requests that failed (non-2xx or transport).
    """

    visits: int = 0
    recommendations: int = 0
    items_shown: int = 0
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    orders: int = 0
    revenue: float = 0.0
    order_revenue: float = 0.0
    errors: int = 0

    def add(self, other: VariantCounts) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def line(self, name: str) -> str:
        """One summary line."""
        per = self.revenue / self.impressions if self.impressions else 0.0
        return (
            f"{name:<12} visits {self.visits:>6,d}  recs {self.recommendations:>6,d}  "
            f"impr {self.impressions:>6,d}  clicks {self.clicks:>5,d}  "
            f"bought {self.purchases:>5,d}  orders {self.orders:>5,d}  "
            f"revenue {self.revenue:>10,.2f} ({per:.3f}/impr)  errors {self.errors}"
        )


@dataclass(frozen=True)
class SimulationSummary:
    """Counts of a simulation, in total and per served variant.

    Attributes:
        total: Every visit.
        by_variant: Variant name -> counts of the visits it served.
        seconds: Wall-clock duration.
        first_errors: The first few error messages.
        snapshot_as_of: The shop clock the customers lived at.
    """

    total: VariantCounts
    by_variant: dict[str, VariantCounts]
    seconds: float
    first_errors: tuple[str, ...]
    snapshot_as_of: str

    @property
    def visits(self) -> int:
        return self.total.visits

    @property
    def errors(self) -> int:
        return self.total.errors

    def lines(self) -> list[str]:
        """The printed summary."""
        rate = self.visits / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"simulated {self.visits:,d} visits in {self.seconds:.1f} s ({rate:.0f}/s) "
            f"at shop time {self.snapshot_as_of}",
            self.total.line("total"),
        ]
        out += [c.line(name) for name, c in sorted(self.by_variant.items())]
        return out


# --------------------------------------------------------------------------- HTTP loop


class _Api:
    """The service over one ``httpx.Client``: failures counted, the first few echoed."""

    def __init__(self, client: httpx.Client, echo: Echo) -> None:
        self.client = client
        self.echo = echo
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _failed(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)
            if len(self.errors) <= SHOW_ERRORS:
                self.echo(f"request failed: {message}")

    def post(
        self, path: str, body: dict[str, Any], expect: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        """The JSON object ``POST path`` answers (holding the keys ``expect``), or None when
        the request failed (counted and, for the first few, echoed)."""
        try:
            r = self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            self._failed(f"POST {path}: {type(exc).__name__}: {exc}")
            return None
        if not r.is_success:
            self._failed(f"POST {path}: {r.status_code} {r.text[:300]}")
            return None
        try:
            answer = r.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not answer.keys() >= set(expect):
            self._failed(f"POST {path}: unexpected answer {r.text[:300]}")
            return None
        return answer


def feedback_rows(rec_id: str, decisions: Sequence[Decision]) -> list[dict[str, Any]]:
    """``POST /feedback`` rows of a visit: the impression of the whole answer, then a click
    per clicked item and an add-to-cart per item bought."""
    rows: list[dict[str, Any]] = [{"recommendation_id": rec_id, "event_type": IMPRESSION}]
    for d in decisions:
        kinds = [CLICK] * d.clicked + [s.ADD_TO_CART] * d.bought
        rows += [
            {"recommendation_id": rec_id, "event_type": kind, "product_id": d.item.product_id}
            for kind in kinds
        ]
    return rows


def event_rows(
    customer: str,
    rec_id: str,
    context: Context,
    decisions: Sequence[Decision],
    lines: Sequence[OrderLine],
) -> list[dict[str, Any]]:
    """``POST /events`` rows of a visit: views (the viewed product, the clicked items), then
    the order's purchase lines, in one session; ids derive from the recommendation id."""
    session = f"sim-{rec_id}"
    viewed = [context.product_id] if context.product_id else []
    viewed += [d.item.product_id for d in decisions if d.clicked]
    rows: list[dict[str, Any]] = [
        {
            "event_id": f"{session}:view:{i}",
            "event_type": s.VIEW,
            "customer_id": customer,
            "product_id": pid,
            "session_id": session,
        }
        for i, pid in enumerate(viewed)
    ]
    order_id = f"{session}:order"
    rows += [
        {
            "event_id": f"{order_id}:{line.product_id}",
            "event_type": PURCHASE,
            "customer_id": customer,
            "product_id": line.product_id,
            "order_id": order_id,
            "unit_price": line.unit_price,
            "quantity": line.quantity,
            "session_id": session,
            "recommendation_id": line.recommendation_id,
        }
        for line in lines
    ]
    return rows


@dataclass(frozen=True)
class _Visit:
    index: int
    customer: str


def _play(
    api: _Api, shopper: Shopper, visit: _Visit, seed: int
) -> tuple[str | None, VariantCounts]:
    """One visit: recommend, impression, clicks, order. Returns its variant and counts."""
    rng = np.random.default_rng([seed, _VISIT_STREAM, visit.index])
    counts = VariantCounts(visits=1)
    context = shopper.draw_context(rng, visit.customer)
    answer = api.post(
        "/recommend",
        {
            "customer_id": visit.customer,
            "placement": context.placement,
            "product_id": context.product_id,
            "cart": list(context.cart),
        },
        expect=("recommendation_id", "variant"),
    )
    if answer is None:
        counts.errors = 1
        return None, counts
    counts.recommendations = 1
    rec_id = str(answer["recommendation_id"])
    items = shown_items(answer)
    counts.items_shown = len(items)
    decisions = shopper.decide(rng, visit.customer, context, items)
    lines = shopper.order(rng, context, decisions, rec_id)
    if items:
        if api.post("/feedback", {"feedback": feedback_rows(rec_id, decisions)}) is None:
            counts.errors += 1
        else:
            counts.impressions = 1
            counts.clicks = sum(d.clicked for d in decisions)
    events = event_rows(visit.customer, rec_id, context, decisions, lines)
    stored = bool(events) and api.post("/events", {"events": events}) is not None
    if events and not stored:
        counts.errors += 1
    if stored and lines:
        products = [line.product_id for line in lines]
        categories = [shopper.truth.products[p].category for p in products]
        shopper.states[visit.customer].record_order(products, categories, shopper.now)
        counts.orders = 1
        counted = [line for line in lines if line.recommendation_id is not None]
        counts.purchases = len(counted)
        counts.revenue = sum(line.unit_price * line.quantity for line in counted)
        counts.order_revenue = sum(line.unit_price * line.quantity for line in lines)
    return str(answer.get("variant", "")), counts


def simulate(
    url: str,
    shop_dir: Path,
    *,
    visits: int,
    seed: int,
    concurrency: int = 1,
    progress: bool = False,
    echo: Echo | None = None,
) -> SimulationSummary:
    """Play ``visits`` simulated visits against the xsell API at ``url``.

    Args:
        url: The service's base URL (``http://127.0.0.1:3000``).
        shop_dir: The synthetic shop the served model was trained on (with ``truth/``).
        visits: Number of visits (>= 1).
        seed: Random seed: the same seed and the same server answers give the same visits.
        concurrency: Lanes of visits in flight at once (a customer's visits stay in one lane).
        progress: Echo a line every tenth of the visits.
        echo: Where messages go (default: standard error).

    Returns:
        The counts, in total and per variant.

    Raises:
        SimulationError: The API is unreachable or answers ``GET /model`` with an error, or the
            shop has no planted truth.
        ValueError: ``visits`` or ``concurrency`` below 1.
    """
    if visits < 1:
        raise ValueError(f"visits must be >= 1, got {visits}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    say: Echo = echo or (lambda msg: print(msg, file=sys.stderr))
    started = time.monotonic()
    limits = httpx.Limits(
        max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2
    )
    with httpx.Client(base_url=url.rstrip("/"), timeout=_TIMEOUT_S, limits=limits) as client:
        try:
            r = client.get("/model")
        except httpx.HTTPError as exc:
            raise SimulationError(f"cannot reach the xsell API at {url}: {exc}") from exc
        if not r.is_success:
            raise SimulationError(f"GET {url}/model answered {r.status_code}: {r.text[:300]}")
        try:
            as_of = str(r.json()["snapshot_as_of"])
            now = pd.Timestamp(as_of)
        except (ValueError, KeyError, TypeError) as exc:
            raise SimulationError(f"GET {url}/model: no snapshot_as_of in {r.text[:300]}") from exc
        shop = load_shop(shop_dir)
        truth = Truth.from_shop(shop, Path(shop_dir))
        shopper = Shopper(truth, customer_states(shop, truth, now), now)
        plan = shopper.draw_customers(np.random.default_rng([seed, _PLAN_STREAM]), visits)
        lanes: list[list[_Visit]] = [[] for _ in range(concurrency)]
        lane_of: dict[str, int] = {}
        for i, customer in enumerate(plan):
            lane = lane_of.setdefault(customer, len(lane_of) % concurrency)
            lanes[lane].append(_Visit(i, customer))
        api = _Api(client, say)
        results: list[tuple[int, str | None, VariantCounts]] = []
        lock = threading.Lock()
        step = max(1, visits // 10)

        def run(lane: list[_Visit]) -> None:
            for visit in lane:
                variant, counts = _play(api, shopper, visit, seed)
                with lock:
                    results.append((visit.index, variant, counts))
                    if progress and len(results) % step == 0:
                        say(f"  .. {len(results):,d}/{visits:,d} visits")

        if concurrency == 1:
            run(lanes[0])
        else:
            threads = [
                threading.Thread(target=run, args=(lane,), daemon=True) for lane in lanes if lane
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    total = VariantCounts()
    by_variant: dict[str, VariantCounts] = {}
    for _, variant, counts in sorted(results, key=lambda r: r[0]):
        total.add(counts)
        if variant is not None:
            by_variant.setdefault(variant, VariantCounts()).add(counts)
    return SimulationSummary(
        total=total,
        by_variant=by_variant,
        seconds=time.monotonic() - started,
        first_errors=tuple(api.errors[:SHOW_ERRORS]),
        snapshot_as_of=as_of,
    )

"""The synthetic shop's fixed catalog: categories, families, products and complement relations.

Every family has good / better / best tiers of two brands; prices, brands, stock, compatible
complement families and quarterly family popularity are drawn once per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from features.data import schema as s
from features.data.synthetic.arrays import _id_strings, _RowSampler
from features.data.synthetic.seasonality import DAY_S, N_QUARTERS

CategoryKind = Literal["durable", "accessory", "consumable", "grocery", "standalone"]

N_TIERS = 3
N_BRANDS = 2
PRODUCTS_PER_FAMILY = N_TIERS * N_BRANDS

_PRODUCT_ID_WIDTH = 5


@dataclass(frozen=True)
class CategorySpec:
    """One category of the synthetic catalog.

    Attributes:
        name: Category name.
        kind: ``durable`` (anchors with complements), ``accessory``, ``consumable`` (linked to a
            durable), ``grocery`` (stand-alone consumables) or ``standalone``.
        base_price: Typical price of the cheapest tier.
        n_families: Number of families (product lines) in the category.
        weight: Base share of shopping missions starting from the category.
        by_age: Mission weight multipliers for young, middle and senior customers.
        by_income: Mission weight multipliers for low, mid and high income.
        by_household: Mission weight multiplier for households of three or more.
        gift: Mission weight multiplier in the gift season (late November to Christmas).
        period_days: Consumables: typical days between repurchases (0 for durables).
        repeat_prob: Consumables: chance that a purchase starts a repurchase rhythm.
        return_prob: Chance that an order line of the category is returned.
    """

    name: str
    kind: CategoryKind
    base_price: float
    n_families: int
    weight: float
    by_age: tuple[float, float, float] = (1.0, 1.0, 1.0)
    by_income: tuple[float, float, float] = (1.0, 1.0, 1.0)
    by_household: float = 1.0
    gift: float = 1.0
    period_days: float = 0.0
    repeat_prob: float = 0.0
    return_prob: float = 0.04

    @property
    def is_consumable(self) -> bool:
        """Whether products of the category are used up and bought again."""
        return self.kind in ("consumable", "grocery")


@dataclass(frozen=True)
class ComplementSpec:
    """A planted complement relation: buying ``category`` makes ``complement`` likely.

    Attributes:
        category: The anchor category.
        complement: The complement category.
        strength: Chance that an anchor purchase comes with the complement (same order or a
            follow-up order), before the customer's cross-sell multiplier.
        same_order_share: Share of those complements bought in the same order.
    """

    category: str
    complement: str
    strength: float
    same_order_share: float


CATEGORIES: tuple[CategorySpec, ...] = (
    # Durable anchors with complements.
    CategorySpec("phone", "durable", 480.0, 8, 0.55, (1.6, 1.0, 0.6), (0.8, 1.0, 1.3), gift=1.8),
    CategorySpec("laptop", "durable", 900.0, 7, 0.35, (1.3, 1.1, 0.7), (0.7, 1.0, 1.4), gift=1.5),
    CategorySpec("camera", "durable", 600.0, 6, 0.2, (1.0, 1.1, 1.0), (0.5, 1.0, 1.7), gift=1.8),
    CategorySpec("coffee_machine", "durable", 180.0, 6, 0.3, (0.7, 1.2, 1.2), gift=1.5),
    CategorySpec("printer", "durable", 150.0, 5, 0.22, (0.6, 1.2, 1.3), by_household=1.3),
    # Accessories.
    CategorySpec("phone_case", "accessory", 22.0, 10, 0.2, (1.5, 1.0, 0.6), return_prob=0.03),
    CategorySpec("screen_protector", "accessory", 12.0, 6, 0.12, (1.4, 1.0, 0.6), return_prob=0.03),
    CategorySpec("charger", "accessory", 25.0, 6, 0.15, return_prob=0.03),
    CategorySpec("laptop_bag", "accessory", 48.0, 6, 0.07, return_prob=0.03),
    CategorySpec("mouse", "accessory", 28.0, 7, 0.12, return_prob=0.03),
    CategorySpec("memory_card", "accessory", 20.0, 6, 0.08, return_prob=0.03),
    CategorySpec("tripod", "accessory", 42.0, 5, 0.04, return_prob=0.03),
    # Consumables linked to a durable.
    CategorySpec(
        "coffee_pods", "consumable", 7.0, 8, 0.25, (0.8, 1.1, 1.1),
        period_days=24, repeat_prob=0.6, return_prob=0.004,
    ),
    CategorySpec(
        "descaler", "consumable", 9.0, 4, 0.04,
        period_days=90, repeat_prob=0.35, return_prob=0.004,
    ),
    CategorySpec(
        "ink", "consumable", 32.0, 8, 0.12,
        period_days=70, repeat_prob=0.55, return_prob=0.004,
    ),
    CategorySpec(
        "paper", "consumable", 8.0, 4, 0.08, by_household=1.3,
        period_days=55, repeat_prob=0.45, return_prob=0.004,
    ),
    # Grocery-like consumables.
    CategorySpec(
        "coffee_beans", "grocery", 12.0, 8, 0.3, (0.9, 1.1, 1.1), (0.8, 1.0, 1.2),
        period_days=21, repeat_prob=0.55, return_prob=0.004,
    ),
    CategorySpec(
        "tea", "grocery", 5.0, 6, 0.15, (0.8, 0.9, 1.4),
        period_days=30, repeat_prob=0.45, return_prob=0.004,
    ),
    CategorySpec(
        "pasta", "grocery", 2.5, 6, 0.22, by_household=1.6,
        period_days=14, repeat_prob=0.4, return_prob=0.004,
    ),
    CategorySpec(
        "pasta_sauce", "grocery", 3.5, 6, 0.12, by_household=1.5,
        period_days=14, repeat_prob=0.35, return_prob=0.004,
    ),
    CategorySpec(
        "cereal", "grocery", 4.0, 6, 0.18, by_household=1.8,
        period_days=18, repeat_prob=0.4, return_prob=0.004,
    ),
    CategorySpec(
        "oat_milk", "grocery", 2.2, 4, 0.15, (1.5, 1.0, 0.6),
        period_days=10, repeat_prob=0.4, return_prob=0.004,
    ),
    CategorySpec(
        "snacks", "grocery", 3.0, 8, 0.22, (1.3, 1.0, 0.8), by_household=1.5, gift=1.2,
        period_days=14, repeat_prob=0.3, return_prob=0.004,
    ),
    CategorySpec(
        "detergent", "grocery", 10.0, 5, 0.12, by_household=1.6,
        period_days=35, repeat_prob=0.45, return_prob=0.004,
    ),
    # Stand-alone categories.
    CategorySpec("headphones", "standalone", 110.0, 7, 0.25, (1.6, 1.0, 0.6), gift=2.0),
    CategorySpec(
        "smartwatch", "standalone", 240.0, 5, 0.12, (1.5, 1.0, 0.5), (0.6, 1.0, 1.4), gift=2.0
    ),
    CategorySpec("blender", "standalone", 75.0, 5, 0.12, gift=1.3),
    CategorySpec("vacuum", "standalone", 230.0, 5, 0.1, by_household=1.4),
    CategorySpec("board_game", "standalone", 35.0, 8, 0.15, by_household=1.8, gift=2.5),
    CategorySpec("book", "standalone", 16.0, 10, 0.3, (0.9, 1.0, 1.3), gift=1.6),
    CategorySpec("kitchen_knife", "standalone", 45.0, 5, 0.06, gift=1.5),
)  # fmt: skip

COMPLEMENTS: tuple[ComplementSpec, ...] = (
    ComplementSpec("phone", "phone_case", 0.55, 0.7),
    ComplementSpec("phone", "screen_protector", 0.4, 0.6),
    ComplementSpec("phone", "charger", 0.3, 0.5),
    ComplementSpec("phone_case", "screen_protector", 0.3, 0.7),
    ComplementSpec("laptop", "laptop_bag", 0.45, 0.6),
    ComplementSpec("laptop", "mouse", 0.45, 0.6),
    ComplementSpec("coffee_machine", "coffee_pods", 0.65, 0.7),
    ComplementSpec("coffee_machine", "descaler", 0.3, 0.4),
    ComplementSpec("printer", "ink", 0.65, 0.7),
    ComplementSpec("printer", "paper", 0.45, 0.6),
    ComplementSpec("camera", "memory_card", 0.55, 0.7),
    ComplementSpec("camera", "tripod", 0.3, 0.4),
    ComplementSpec("smartwatch", "charger", 0.2, 0.5),
    ComplementSpec("pasta", "pasta_sauce", 0.45, 1.0),
    ComplementSpec("cereal", "oat_milk", 0.35, 1.0),
)

BRAND_NAMES: tuple[str, ...] = (
    "Acme", "Borealis", "Cobalt", "Dunmore", "Elara", "Fjord", "Granite", "Halcyon", "Ionic",
    "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Orchid", "Pioneer", "Quartz",
    "Ridgeway", "Solace", "Tundra", "Umbra", "Vantage", "Willow", "Xenon", "Yarrow", "Zephyr",
)  # fmt: skip

PRODUCTS_SCHEMA = pa.schema(
    [
        (s.PRODUCT_ID, pa.string()),
        (s.CATEGORY, pa.string()),
        (s.FAMILY, pa.string()),
        (s.BRAND, pa.string()),
        (s.TIER, pa.int64()),
        (s.PRICE, pa.float64()),
        (s.IS_CONSUMABLE, pa.bool_()),
        (s.IN_STOCK, pa.bool_()),
    ]
)

FAMILIES_SCHEMA = pa.schema(
    [
        (s.FAMILY, pa.string()),
        (s.CATEGORY, pa.string()),
        (s.PRODUCT_ID, pa.string()),
        (s.TIER, pa.int64()),
        (s.PRICE, pa.float64()),
        (s.BRAND, pa.string()),
    ]
)


def _product_index(family: np.ndarray, tier: np.ndarray, brand: np.ndarray) -> np.ndarray:
    """Catalog index of the product of ``family`` at ``tier`` (1..3) from brand slot ``brand``."""
    return family * PRODUCTS_PER_FAMILY + (tier - 1) * N_BRANDS + brand


def _round_price(price: np.ndarray) -> np.ndarray:
    """Shop-style prices: ``x.x9`` below 10, ``x.99`` from 10 up."""
    small = np.maximum(np.round(price, 1) - 0.01, 0.49)
    large = np.floor(price) + 0.99
    return np.round(np.where(price < 10.0, small, large), 2)


@dataclass(frozen=True)
class _Catalog:
    """The fixed product catalog and the samplers that pick from it.

    Products are laid out family by family, ``PRODUCTS_PER_FAMILY`` each, ordered by tier then
    brand slot, so ``_product_index`` finds a product without a lookup.
    """

    family_category: np.ndarray
    family_start: np.ndarray
    family_names: np.ndarray
    family_brands: np.ndarray
    price: np.ndarray
    in_stock: np.ndarray
    compatible: np.ndarray
    product_ids: pa.Array
    family_sampler: _RowSampler
    category_sampler: _RowSampler
    favorite_sampler: _RowSampler
    grocery_sampler: _RowSampler
    category_is_consumable: np.ndarray
    category_is_grocery: np.ndarray
    category_period_s: np.ndarray
    category_repeat_prob: np.ndarray
    category_return_prob: np.ndarray

    @classmethod
    def build(cls, rng: np.random.Generator) -> _Catalog:
        """Draw families, brands, prices, stock and family popularity from ``rng``."""
        n_fam = np.array([c.n_families for c in CATEGORIES])
        family_category = np.repeat(np.arange(len(CATEGORIES)), n_fam)
        family_start = np.concatenate([[0], np.cumsum(n_fam)[:-1]])
        n_families = len(family_category)
        family_names = np.array(
            [f"{c.name}_{j + 1:02d}" for c in CATEGORIES for j in range(c.n_families)]
        )

        # Two brands per family from a pool of three per category.
        pools = np.stack([rng.choice(len(BRAND_NAMES), size=3, replace=False) for _ in CATEGORIES])
        pair = np.argsort(rng.random((n_families, 3)), axis=1)[:, :N_BRANDS]
        brand_idx = pools[family_category[:, None], pair]
        family_brands = np.array(BRAND_NAMES)[brand_idx]

        # Prices: family level, tier steps of 10-35%, a brand premium or discount.
        base = np.array([c.base_price for c in CATEGORIES])[family_category]
        base = base * rng.lognormal(0.0, 0.3, n_families)
        steps = rng.uniform(1.10, 1.35, (n_families, N_TIERS - 1))
        tier_factor = np.concatenate([np.ones((n_families, 1)), np.cumprod(steps, axis=1)], 1)
        brand_factor = np.stack([np.ones(n_families), rng.uniform(0.92, 1.1, n_families)], 1)
        raw = base[:, None, None] * tier_factor[:, :, None] * brand_factor[:, None, :]
        price = _round_price(raw)
        for tier in range(1, N_TIERS):
            price[:, tier] = np.maximum(price[:, tier], np.round(price[:, tier - 1] + 0.1, 2))
        price = price.reshape(-1)
        n_products = len(price)
        in_stock = rng.random(n_products) < 0.97

        # Which family of each complement category fits each family of the anchor category.
        category_index = {c.name: k for k, c in enumerate(CATEGORIES)}
        compatible = np.full((n_families, len(COMPLEMENTS)), -1, dtype=np.int64)
        for r, rel in enumerate(COMPLEMENTS):
            src, dst = category_index[rel.category], category_index[rel.complement]
            rows = np.flatnonzero(family_category == src)
            compatible[rows, r] = family_start[dst] + rng.integers(0, n_fam[dst], len(rows))

        # Family popularity: Zipf-like within the category, drifting quarter to quarter.
        max_fam = int(n_fam.max())
        fam_weights = np.zeros((len(CATEGORIES), N_QUARTERS, max_fam))
        quarters = np.arange(N_QUARTERS) - (N_QUARTERS - 1) / 2
        for k, c in enumerate(CATEGORIES):
            zipf = 1.0 / (1.0 + rng.permutation(c.n_families)) ** 0.9
            trend = rng.normal(0.0, 0.35, c.n_families)
            fam_weights[k, :, : c.n_families] = zipf[None, :] * np.exp(
                quarters[:, None] * trend[None, :]
            )

        # Mission category weights per persona group and season.
        cat_w = _category_weights()
        grocery = np.array([c.kind == "grocery" for c in CATEGORIES])
        product_ids = _id_strings("P", np.arange(1, n_products + 1), _PRODUCT_ID_WIDTH)
        return cls(
            family_category=family_category,
            family_start=family_start,
            family_names=family_names,
            family_brands=family_brands,
            price=price,
            in_stock=in_stock,
            compatible=compatible,
            product_ids=product_ids,
            family_sampler=_RowSampler.from_weights(fam_weights.reshape(-1, max_fam)),
            category_sampler=_RowSampler.from_weights(cat_w.reshape(-1, len(CATEGORIES))),
            favorite_sampler=_RowSampler.from_weights(cat_w[:, 0]),
            grocery_sampler=_RowSampler.from_weights(cat_w[:, 0] * grocery[None, :]),
            category_is_consumable=np.array([c.is_consumable for c in CATEGORIES]),
            category_is_grocery=grocery,
            category_period_s=np.array([c.period_days * DAY_S for c in CATEGORIES]),
            category_repeat_prob=np.array([c.repeat_prob for c in CATEGORIES]),
            category_return_prob=np.array([c.return_prob for c in CATEGORIES]),
        )

    @property
    def n_products(self) -> int:
        """Number of products in the catalog."""
        return len(self.price)

    def product_category(self, product: np.ndarray) -> np.ndarray:
        """Category index of catalog products."""
        return self.family_category[product // PRODUCTS_PER_FAMILY]

    def draw_families(
        self, rng: np.random.Generator, category: np.ndarray, quarter: np.ndarray
    ) -> np.ndarray:
        """A family of each category, by the family's popularity in that quarter."""
        local = self.family_sampler.sample(rng, category * N_QUARTERS + quarter)
        return self.family_start[category] + local

    def products_table(self) -> pa.Table:
        """The ``products`` table."""
        product = np.arange(self.n_products)
        family = product // PRODUCTS_PER_FAMILY
        category = self.family_category[family]
        names = np.array([c.name for c in CATEGORIES])
        return pa.table(
            {
                s.PRODUCT_ID: self.product_ids,
                s.CATEGORY: names[category],
                s.FAMILY: self.family_names[family],
                s.BRAND: self.family_brands[family, product % N_BRANDS],
                s.TIER: product % PRODUCTS_PER_FAMILY // N_BRANDS + 1,
                s.PRICE: self.price,
                s.IS_CONSUMABLE: self.category_is_consumable[category],
                s.IN_STOCK: self.in_stock,
            },
            schema=PRODUCTS_SCHEMA,
        )

    def families_table(self) -> pa.Table:
        """Truth: every product with its family, category, tier, price and brand."""
        products = self.products_table()
        return pa.table(
            {
                s.FAMILY: products[s.FAMILY],
                s.CATEGORY: products[s.CATEGORY],
                s.PRODUCT_ID: products[s.PRODUCT_ID],
                s.TIER: products[s.TIER],
                s.PRICE: products[s.PRICE],
                s.BRAND: products[s.BRAND],
            },
            schema=FAMILIES_SCHEMA,
        )


def _category_weights() -> np.ndarray:
    """Mission category weights of shape ``(n_groups, 2, n_categories)`` (group, gift season).

    A persona group is ``(age_group * 3 + income) * 2 + (household_size >= 3)``.
    """
    n_cat = len(CATEGORIES)
    base = np.array([c.weight for c in CATEGORIES])
    by_age = np.array([c.by_age for c in CATEGORIES]).T  # (3, n_cat)
    by_income = np.array([c.by_income for c in CATEGORIES]).T
    by_household = np.stack([np.ones(n_cat), np.array([c.by_household for c in CATEGORIES])])
    gift = np.stack([np.ones(n_cat), np.array([c.gift for c in CATEGORIES])])
    w = (
        base[None, None, None, None, :]
        * by_age[:, None, None, None, :]
        * by_income[None, :, None, None, :]
        * by_household[None, None, :, None, :]
        * gift[None, None, None, :, :]
    )
    return w.reshape(-1, 2, n_cat)

"""The built-in synthetic shop: a fixed catalog, personas and a year of planted behaviour.

``generate_shop`` writes the four contract tables (``customers``, ``products``, ``purchases``,
``events``) plus the planted truth under ``truth/`` (``complements``, ``families``,
``customer_params``), which is not part of the data contract and exists for tests and
evaluation.

What is planted (rather than uniform noise):

* A catalog of categories with complement relations (phone -> phone case -> screen protector,
  coffee machine -> pods, printer -> ink, ...). Every family has good / better / best tiers of
  two brands, the next tier costing 10-35% more, so some upgrades fall inside a 25% uplift cap
  and some outside it.
* Personas (age band, income band, region, household size) drive price sensitivity (which tier
  is bought), upgrade propensity and category affinity (which categories a mission starts from).
* Each shopping mission buys an anchor product, often with complements in the same order or in
  a follow-up order 1-21 days later; consumables are repurchased periodically; a small share of
  lines is returned later.
* Browsing sessions precede orders: a view of a cheaper tier then a purchase of the pricier one
  (upsell), add to cart then remove of a pricier tier (downsell), views of complements that were
  not bought, and browse-only sessions. Every event is strictly before the order it leads to.
* Seasonality: a November / December bump, gift categories peaking in the gift season, a weekly
  and an hourly pattern, family popularity drifting quarter to quarter.

Everything is vectorised NumPy per chunk of customers, each chunk with its own generator
``default_rng([seed, stream, chunk_index])``: the output is byte-identical for identical
arguments and never holds more than one chunk in memory.

Modules: ``catalog`` (categories, families, products, complement relations), ``personas``
(customers and their latent parameters), ``seasonality`` (the period's calendar),
``behaviour`` (missions, orders, complements, repeat purchase, returns, sessions), ``writer``
(``generate_shop`` and the tables it writes) and ``arrays`` (shared NumPy / Arrow helpers).
"""

from __future__ import annotations

from features.data.synthetic.catalog import (
    BRAND_NAMES,
    CATEGORIES,
    COMPLEMENTS,
    FAMILIES_SCHEMA,
    N_BRANDS,
    N_TIERS,
    PRODUCTS_PER_FAMILY,
    PRODUCTS_SCHEMA,
    CategoryKind,
    CategorySpec,
    ComplementSpec,
)
from features.data.synthetic.personas import (
    AGE_BAND,
    AGE_BAND_P,
    AGE_BANDS,
    AGE_GROUPS,
    HOUSEHOLD_SIZE,
    INCOME_BAND,
    INCOME_BANDS,
    REGION,
    REGIONS,
    SEGMENT,
)
from features.data.synthetic.seasonality import DAY_S, N_QUARTERS
from features.data.synthetic.writer import (
    COMPLEMENTS_SCHEMA,
    CUSTOMER_PARAMS_SCHEMA,
    CUSTOMERS_SCHEMA,
    EVENTS_SCHEMA,
    PURCHASES_SCHEMA,
    TRUTH_COMPLEMENTS,
    TRUTH_CUSTOMER_PARAMS,
    TRUTH_DIR,
    TRUTH_FAMILIES,
    TRUTH_TABLES,
    ShopFormat,
    ShopSummary,
    generate_shop,
)

__all__ = [
    "AGE_BAND",
    "AGE_BANDS",
    "AGE_BAND_P",
    "AGE_GROUPS",
    "BRAND_NAMES",
    "CATEGORIES",
    "COMPLEMENTS",
    "COMPLEMENTS_SCHEMA",
    "CUSTOMERS_SCHEMA",
    "CUSTOMER_PARAMS_SCHEMA",
    "DAY_S",
    "EVENTS_SCHEMA",
    "FAMILIES_SCHEMA",
    "HOUSEHOLD_SIZE",
    "INCOME_BAND",
    "INCOME_BANDS",
    "N_BRANDS",
    "N_QUARTERS",
    "N_TIERS",
    "PRODUCTS_PER_FAMILY",
    "PRODUCTS_SCHEMA",
    "PURCHASES_SCHEMA",
    "REGION",
    "REGIONS",
    "SEGMENT",
    "TRUTH_COMPLEMENTS",
    "TRUTH_CUSTOMER_PARAMS",
    "TRUTH_DIR",
    "TRUTH_FAMILIES",
    "TRUTH_TABLES",
    "CategoryKind",
    "CategorySpec",
    "ComplementSpec",
    "ShopFormat",
    "ShopSummary",
    "generate_shop",
]

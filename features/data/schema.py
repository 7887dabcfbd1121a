"""The data contract: table names, column names and their types, in one place.

Every other module refers to columns through these constants. A shop's data is a folder with
one Parquet or CSV file per table (``customers.parquet`` or ``customers.csv``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ColumnKind = Literal["id", "str", "float", "int", "bool", "ts", "date"]

# Table names.
CUSTOMERS = "customers"
PRODUCTS = "products"
PURCHASES = "purchases"
EVENTS = "events"

# Column names.
CUSTOMER_ID = "customer_id"
PRODUCT_ID = "product_id"
ORDER_ID = "order_id"
SESSION_ID = "session_id"
TS = "ts"
SIGNUP_DATE = "signup_date"
CATEGORY = "category"
FAMILY = "family"
BRAND = "brand"
TIER = "tier"
PRICE = "price"
UNIT_PRICE = "unit_price"
QUANTITY = "quantity"
IS_CONSUMABLE = "is_consumable"
IN_STOCK = "in_stock"
EVENT_TYPE = "event_type"

# Event types.
VIEW = "view"
ADD_TO_CART = "add_to_cart"
REMOVE_FROM_CART = "remove_from_cart"
EVENT_TYPES = (VIEW, ADD_TO_CART, REMOVE_FROM_CART)

# Task names as they appear in every output (the tasks themselves are declared in
# ``features/tasks/``) and the placements a request comes from.
CROSS_SELL = "cross_sell"
UPSELL = "upsell"
REPLENISH = "replenish"
PLACEMENTS = ("product_page", "cart", "checkout", "post_purchase")

# Persona column used to slice metrics and to pick segment popularity, in order of preference.
SEGMENT_COLUMNS = ("segment", "income_band", "age_band", "region", "household_size")


@dataclass(frozen=True)
class TableSpec:
    """Required and optional columns of one table, with their kinds.

    Attributes:
        name: Table name (also the file stem).
        required: Column name -> kind, all must be present.
        optional: Column name -> kind, typed when present.
        key: Columns that must be unique together (empty: no key).
        extra_allowed: Whether unlisted columns are kept (persona / attribute columns).
        optional_table: Whether the whole table may be absent.
    """

    name: str
    required: dict[str, ColumnKind]
    optional: dict[str, ColumnKind] = field(default_factory=dict)
    key: tuple[str, ...] = ()
    extra_allowed: bool = True
    optional_table: bool = False


TABLE_SPECS: dict[str, TableSpec] = {
    CUSTOMERS: TableSpec(
        name=CUSTOMERS,
        required={CUSTOMER_ID: "id"},
        optional={SIGNUP_DATE: "ts"},
        key=(CUSTOMER_ID,),
    ),
    PRODUCTS: TableSpec(
        name=PRODUCTS,
        required={PRODUCT_ID: "id", CATEGORY: "str", PRICE: "float"},
        optional={
            FAMILY: "str",
            BRAND: "str",
            TIER: "int",
            IS_CONSUMABLE: "bool",
            IN_STOCK: "bool",
        },
        key=(PRODUCT_ID,),
    ),
    PURCHASES: TableSpec(
        name=PURCHASES,
        required={
            ORDER_ID: "id",
            CUSTOMER_ID: "id",
            PRODUCT_ID: "id",
            TS: "ts",
            UNIT_PRICE: "float",
        },
        optional={QUANTITY: "float"},
        extra_allowed=True,
    ),
    EVENTS: TableSpec(
        name=EVENTS,
        required={CUSTOMER_ID: "id", PRODUCT_ID: "id", TS: "ts", EVENT_TYPE: "str"},
        optional={SESSION_ID: "id"},
        optional_table=True,
    ),
}

TABLE_ORDER = (CUSTOMERS, PRODUCTS, PURCHASES, EVENTS)

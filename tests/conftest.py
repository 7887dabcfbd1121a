"""Shared fixtures: a hand-made tiny shop (5 customers, 6 products, 12 order lines, events),
and (from ``trained_model``) the one trained model of the suite, ``trained``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from trained_model import trained  # noqa: F401  (the shared session fixture)

from features.data import schema as s

WriteTable = Callable[..., Path]


def tiny_tables() -> dict[str, pd.DataFrame]:
    """Fresh copies of the tiny shop's raw tables (ids as strings, timestamps parsed)."""
    customers = pd.DataFrame(
        {
            s.CUSTOMER_ID: ["c1", "c2", "c3", "c4", "c5"],
            s.SIGNUP_DATE: pd.to_datetime(
                ["2023-01-01", "2023-02-01", "2023-03-01", "2023-04-01", "2023-05-01"]
            ),
            "age_band": ["18-24", "25-34", "35-44", "25-34", "45-54"],
            "household_size": [1, 2, 4, 3, 2],
            "segment": ["value", "premium", "value", "family", "premium"],
        }
    )
    products = pd.DataFrame(
        {
            s.PRODUCT_ID: ["p1", "p2", "p3", "p4", "p5", "p6"],
            s.CATEGORY: ["phone", "phone", "case", "case", "charger", "coffee"],
            s.FAMILY: ["phone-x", "phone-x", "case", "case", "charger", "coffee"],
            s.BRAND: ["acme", "acme", "acme", "bolt", "bolt", "bean"],
            s.PRICE: [499.0, 799.0, 19.9, 24.9, 29.0, 8.5],
            s.IS_CONSUMABLE: [False, False, False, False, False, True],
        }
    )
    purchases = pd.DataFrame(
        {
            s.ORDER_ID: ["o1", "o1", "o2", "o3", "o3", "o4", "o5", "o6", "o6", "o7", "o8", "o9"],
            s.CUSTOMER_ID: ["c1", "c1", "c2", "c3", "c3", "c4", "c5", "c1", "c1", "c2", "c3", "c4"],
            s.PRODUCT_ID: ["p1", "p3", "p2", "p1", "p5", "p6", "p6", "p6", "p5", "p4", "p6", "p6"],
            s.TS: pd.to_datetime(
                [
                    "2024-01-05 10:00",
                    "2024-01-05 10:00",
                    "2024-01-09 12:30",
                    "2024-01-15 09:00",
                    "2024-01-15 09:00",
                    "2024-01-20 18:00",
                    "2024-02-01 08:15",
                    "2024-02-03 11:00",
                    "2024-02-03 11:00",
                    "2024-02-10 14:00",
                    "2024-02-20 16:45",
                    "2024-03-01 07:30",
                ]
            ),
            s.UNIT_PRICE: [499.0, 19.9, 799.0, 449.0, 29.0, 8.5, 8.5, 8.5, 29.0, 24.9, 8.0, 8.5],
            s.QUANTITY: [1, 1, 1, 1, 1, 2, 1, 3, 1, 1, 2, 1],
        }
    )
    events = pd.DataFrame(
        {
            s.CUSTOMER_ID: ["c1", "c1", "c2", "c3", "c4", "c5"],
            s.PRODUCT_ID: ["p1", "p2", "p2", "p5", "p6", "p4"],
            s.TS: pd.to_datetime(
                [
                    "2024-01-04 20:00",
                    "2024-01-04 20:05",
                    "2024-01-09 12:00",
                    "2024-01-15 08:50",
                    "2024-01-20 17:55",
                    "2024-02-01 08:00",
                ]
            ),
            s.EVENT_TYPE: [
                "view",
                "view",
                "add_to_cart",
                "view",
                "add_to_cart",
                "remove_from_cart",
            ],
            s.SESSION_ID: ["s1", "s1", "s2", "s3", "s4", "s5"],
        }
    )
    return {s.CUSTOMERS: customers, s.PRODUCTS: products, s.PURCHASES: purchases, s.EVENTS: events}


def write_table(folder: Path, table: str, frame: pd.DataFrame, fmt: str | None = None) -> Path:
    """Write (or overwrite) one table in ``folder``, keeping the format already used there.

    Args:
        folder: Shop folder.
        table: Table name (file stem).
        frame: Raw table to write.
        fmt: ``"parquet"`` or ``"csv"``; default: the existing file's format, else Parquet.

    Returns:
        The path written. Any file of the other format for the same table is removed.
    """
    if fmt is None:
        fmt = "csv" if (folder / f"{table}.csv").exists() else "parquet"
    for suffix in (".parquet", ".csv"):
        (folder / f"{table}{suffix}").unlink(missing_ok=True)
    path = folder / f"{table}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def write_shop(folder: Path, tables: dict[str, pd.DataFrame], fmt: str = "parquet") -> Path:
    """Write every table of ``tables`` into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for table, frame in tables.items():
        write_table(folder, table, frame, fmt)
    return folder


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    """The tiny shop's raw tables, fresh for each test (safe to mutate)."""
    return tiny_tables()


@pytest.fixture
def tiny_shop_dir(tmp_path: Path) -> Path:
    """A valid tiny shop written as Parquet, events included."""
    return write_shop(tmp_path / "shop", tiny_tables())


@pytest.fixture
def rewrite() -> WriteTable:
    """``rewrite(folder, table, frame)``: overwrite one table of a shop folder."""
    return write_table

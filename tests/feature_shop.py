"""The synthetic shop of the feature tests (a pytest plugin module loaded by
``tests/features/conftest.py``) and helpers on feature matrices.

One shop (800 customers, seed 3) is generated per session, and one snapshot at ``CUTOFF`` serves
most feature tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.batch import (
    ANCHOR,
    AS_OF,
    CART,
    PLACEMENT,
    QUERY_ID,
    QueryBatch,
    single_query,
)
from features.config import FeatureConfig
from features.data import schema as s
from features.data.io import Shop, load_shop
from features.data.synthetic import TRUTH_COMPLEMENTS, TRUTH_DIR, generate_shop
from features.matrix import FeatureMatrix
from features.queries import LabelledQueries
from features.snapshot import FeatureSnapshot, build_snapshot, to_days
from features.tasks import get_task, task_names

N_CUSTOMERS = 800
SEED = 3
CUTOFF = pd.Timestamp("2025-09-01")
WINDOW = pd.Timedelta(days=14)
CONFIG = FeatureConfig()
SAMPLE_QUERIES = 30
UNKNOWN_CUSTOMER = "C-never-seen"
LEAK = "LEAK"


@pytest.fixture(scope="session")
def shop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated shop folder (tables plus ``truth/``)."""
    folder = tmp_path_factory.mktemp("synthetic")
    generate_shop(folder, n_customers=N_CUSTOMERS, seed=SEED)
    return folder


@pytest.fixture(scope="session")
def shop(shop_dir: Path) -> Shop:
    """The generated shop, loaded and validated."""
    return load_shop(shop_dir)


@pytest.fixture(scope="session")
def complements(shop_dir: Path) -> pd.DataFrame:
    """Planted complement relations: ``category, complement_category, strength, ...``."""
    return pd.read_parquet(shop_dir / TRUTH_DIR / f"{TRUTH_COMPLEMENTS}.parquet")


@pytest.fixture(scope="session")
def snap(shop: Shop) -> FeatureSnapshot:
    """The snapshot at ``CUTOFF``."""
    return build_snapshot(shop, as_of=CUTOFF, config=CONFIG)


@pytest.fixture(scope="session")
def window_queries(shop: Shop) -> dict[str, LabelledQueries]:
    """Labelled queries of each task with ``as_of`` in ``[CUTOFF, CUTOFF + WINDOW)``."""
    return {
        task: get_task(task).training_queries(
            shop, start=CUTOFF, end=CUTOFF + WINDOW, config=CONFIG
        )
        for task in task_names()
    }


def single_batch(snapshot: FeatureSnapshot, row: pd.Series, task: str) -> QueryBatch:
    """The serving-path batch of one query-frame row (``as_of`` as float days)."""
    anchor = row[ANCHOR]
    return single_query(
        snapshot,
        task=task,
        customer_id=row[s.CUSTOMER_ID],
        placement=row[PLACEMENT],
        anchor_product_id=anchor if isinstance(anchor, str) else None,
        cart_product_ids=list(row[CART]),
        as_of=float(to_days(pd.Timestamp(row[AS_OF]))),
        query_id=row[QUERY_ID],
    )


def rows_of(fm: FeatureMatrix, query: int) -> dict[str, np.ndarray]:
    """The rows of one query of a feature matrix (products, features, reasons)."""
    m = fm.query == query
    return {
        "product": fm.product[m],
        "X": fm.X[m],
        "best_source": fm.best_source[m],
        "reason_product": fm.reason_product[m],
    }


def assert_same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Same products in the same order and bit-identical features (NaN equal to NaN)."""
    np.testing.assert_array_equal(a["product"], b["product"])
    for key in ("X", "best_source", "reason_product"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def col(fm: FeatureMatrix, name: str) -> np.ndarray:
    return fm.X[:, fm.columns.index(name)]


def product_category(snapshot: FeatureSnapshot) -> np.ndarray:
    """Category name per product position."""
    return np.asarray(snapshot.category_levels, dtype=object)[snapshot.products.category]


def most_popular_in(snapshot: FeatureSnapshot, category: str) -> str:
    """Id of the category's best-selling product over the longest popularity window."""
    pop = snapshot.products.long_popularity
    members = np.flatnonzero(product_category(snapshot) == category)
    return str(snapshot.product_ids[members[np.argmax(pop[members])]])


def anonymous_query(snapshot: FeatureSnapshot, task: str, anchor: str) -> QueryBatch:
    """A product-page query of an unknown customer at the snapshot's cut-off."""
    return single_query(
        snapshot,
        task=task,
        customer_id=UNKNOWN_CUSTOMER,
        placement="product_page",
        anchor_product_id=anchor,
        cart_product_ids=[],
        as_of=snapshot.as_of,
    )


def owned_before(shop: Shop, as_of: pd.Timestamp) -> set[tuple[str, str]]:
    """(customer, product) pairs with positive net quantity from purchases before ``as_of``."""
    pur = shop.purchases.loc[shop.purchases[s.TS] < as_of]
    net = pur.groupby([s.CUSTOMER_ID, s.PRODUCT_ID])[s.QUANTITY].sum()
    return set(net.index[net.to_numpy() > 0])


def context_sets(batch: QueryBatch) -> list[set[int]]:
    return [
        set(batch.context[batch.context_ptr[i] : batch.context_ptr[i + 1]].tolist())
        for i in range(len(batch))
    ]

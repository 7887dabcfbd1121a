"""Fixtures of the training tests on the shared trained model: version 1 loaded back from the
registry, saved as a folder, and a mixed batch of queries for it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow_isolation import clear_uri_env, forget_uris
from trained_model import (
    EXPERIMENT,
    MODEL_NAME,
    UNKNOWN_CUSTOMER,
    Trained,
    anchor_with_upsell,
)

from features.batch import ANCHOR, AS_OF, CART, PLACEMENT, QUERY_ID, K
from features.data import schema as s
from features.data.synthetic import generate_shop
from training.model import XsellModel, load_model
from training.tracking import Tracker


@pytest.fixture(scope="session")
def model(trained: Trained) -> XsellModel:
    """Version 1, loaded back from the MLflow registry."""
    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        Tracker(experiment=EXPERIMENT, root=trained.root)  # points MLflow at the store
        loaded = load_model(f"models:/{MODEL_NAME}/{trained.result.version}")
        forget_uris()
    return loaded


@pytest.fixture(scope="session")
def model_dir(model: XsellModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 saved as a plain model folder."""
    return model.save(tmp_path_factory.mktemp("model") / "xsell-model")


@pytest.fixture(scope="session")
def queries(model: XsellModel, trained: Trained) -> pd.DataFrame:
    """Known and unknown customers, every placement, with and without anchor and cart."""
    snap = model.snapshot
    known = [str(c) for c in snap.customer_ids[:3]]
    top = [str(snap.product_ids[int(p)]) for p in snap.top.global_top[:3]]
    anchor = anchor_with_upsell(model, trained.fits)
    rows = []
    for customer in [*known, UNKNOWN_CUSTOMER]:
        for placement in s.PLACEMENTS:
            for cart in ([], top[:2]):
                anchors = [anchor, None] if placement == "product_page" else [None]
                for a in anchors:
                    rows.append(
                        {
                            QUERY_ID: f"q{len(rows):03d}",
                            s.CUSTOMER_ID: customer,
                            PLACEMENT: placement,
                            ANCHOR: a,
                            CART: list(cart),
                            AS_OF: snap.as_of_timestamp,
                            K: 1 + len(rows) % 3,
                        }
                    )
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def small_shop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-customer, 180-day synthetic shop: enough history for a 28 + 14 + 14 day split."""
    folder = tmp_path_factory.mktemp("small") / "shop"
    generate_shop(folder, n_customers=300, seed=2, days=180)
    return folder

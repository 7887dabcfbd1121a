"""The one shared trained model of the suite (a pytest plugin module loaded by ``conftest.py``).

Training is the slow part, so one session-scoped fixture generates a small synthetic shop and
trains it once with :data:`FAST` (real LightGBM, a real MLflow SQLite store under a temporary
folder), spying on ``fit_ranker`` to record what each task's ranker was fitted on. The training
and serving tests reuse it.

The shared store is append-only for its users: a test may register further versions (the
weak-challenger round does), but nothing may move ``champion`` away from version 1. Tests that
move aliases (``xsell promote``) use a store of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import pytest
from mlflow.tracking import MlflowClient
from mlflow_isolation import clear_uri_env, forget_uris

import training.engines as engines_module
from features.batch import ANCHOR
from features.data import schema as s
from features.data.io import Shop, load_shop
from features.data.synthetic import generate_shop
from features.pipeline import TaskSet
from features.recommend import XsellModel
from training.config import RankerConfig, SplitConfig, TrainConfig
from training.ranker import fit_ranker
from training.tracking import tracking_uri
from training.train import TrainResult, train

N_CUSTOMERS = 1200
SEED = 5
EXPERIMENT = "t"
MODEL_NAME = "xsell-ranker"
UNKNOWN_CUSTOMER = "C-never-seen"

# One thread: OpenMP threads spin badly when the test machine's cores are shared.
FAST = TrainConfig(
    split=SplitConfig(train_days=42, validation_days=28, test_days=28, max_queries_per_cutoff=400),
    ranker=RankerConfig(max_rounds=60, early_stopping_rounds=10, num_threads=1),
)


@dataclass
class FitCall:
    """The arguments and result of one ``fit_ranker`` call made by ``train``."""

    fit: TaskSet
    valid: TaskSet
    kwargs: dict[str, Any]
    booster: lgb.Booster


@dataclass
class Trained:
    """The shop, the store and what the first training run produced (version 1, champion)."""

    shop_dir: Path
    shop: Shop
    root: Path
    result: TrainResult
    aliases: dict[str, int]
    fits: dict[str, FitCall] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """The store's tracking (and registry) URI."""
        return tracking_uri(self.root)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


def aliases_of(client: MlflowClient, name: str = MODEL_NAME) -> dict[str, int]:
    """Alias -> version of a registered model."""
    return {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}


def versions_of(client: MlflowClient, name: str = MODEL_NAME) -> list[int]:
    """The registered versions of a model, ascending."""
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))


def anchor_with_upsell(model: XsellModel, fits: dict[str, FitCall]) -> str:
    """A product (an anchor of a training upsell query) that gets upsell items at serving."""
    anchors = fits[s.UPSELL].fit.queries[ANCHOR].dropna().astype(str).unique()
    for anchor in anchors[:50]:
        got = model.recommend_one(
            customer_id=str(model.snapshot.customer_ids[0]),
            placement="product_page",
            product_id=anchor,
            cart=[],
            k={s.UPSELL: 3},
        )
        if got[s.UPSELL].items:
            return str(anchor)
    raise AssertionError("no training anchor gets upsell candidates")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One synthetic shop trained once with FAST into a fresh store (``fit_ranker`` spied)."""
    base = tmp_path_factory.mktemp("trained")
    shop_dir = base / "shop"
    generate_shop(shop_dir, n_customers=N_CUSTOMERS, seed=SEED)
    root = base / "mlruns"
    fits: dict[str, FitCall] = {}

    def spy(fit: TaskSet, valid: TaskSet, **kwargs: Any) -> lgb.Booster:
        booster = fit_ranker(fit, valid, **kwargs)
        fits[fit.task] = FitCall(fit, valid, kwargs, booster)
        return booster

    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        mp.setattr(engines_module, "fit_ranker", spy)
        result = train(shop_dir, config=FAST, root=root, experiment=EXPERIMENT)
        uri = tracking_uri(root)
        aliases = aliases_of(MlflowClient(tracking_uri=uri, registry_uri=uri))
        forget_uris()
    return Trained(shop_dir, load_shop(shop_dir), root, result, aliases, fits)

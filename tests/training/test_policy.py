"""Never worse than the heuristics: the served policy per task and the champion rule.

A shop where the features carry no signal is made by fitting every ranker on shuffled labels;
training must then serve each task by its best baseline, record it, and the service must
return that baseline's order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401

import training.engines as engines_module
from features.data import schema as s
from features.data.synthetic import generate_shop
from features.guardrails import apply_guardrails
from features.matrix import build_features
from features.pipeline import TaskSet
from features.recommend import BASELINE_PREFIX, RANKER, XsellModel
from features.tasks import get_task, task_names
from training.config import RankerConfig, SplitConfig, TrainConfig
from training.evaluate import TaskEvaluation, choose_policy
from training.model import load_model
from training.ranker import fit_ranker
from training.tracking import Tracker, promotion_decision, tracking_uri
from training.train import TrainResult, train

CONFIG = TrainConfig(
    split=SplitConfig(train_days=42, validation_days=28, test_days=28, max_queries_per_cutoff=300),
    ranker=RankerConfig(max_rounds=40, early_stopping_rounds=10, num_threads=1),
    promotion_margin=0.02,
)
MODEL_NAME = "xsell-ranker"


def _shuffled(ts: TaskSet, seed: int) -> TaskSet:
    """The same rows with labels permuted within the set: features no longer predict them."""
    rng = np.random.default_rng(seed)
    return dataclasses.replace(ts, label=rng.permutation(ts.label))


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, XsellModel]:
    """A run whose rankers learned from shuffled labels, and its registered model."""
    base = tmp_path_factory.mktemp("policy")
    generate_shop(base / "shop", n_customers=1000, seed=9)

    def noise_ranker(fit: TaskSet, valid: TaskSet, **kwargs: Any) -> lgb.Booster:
        return fit_ranker(_shuffled(fit, 1), _shuffled(valid, 2), **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        mp.setattr(engines_module, "fit_ranker", noise_ranker)
        result = train(base / "shop", config=CONFIG, root=base / "mlruns", experiment="noise")
        Tracker(experiment="noise", root=base / "mlruns")
        model = load_model(f"models:/{MODEL_NAME}/{result.version}")
        uri = tracking_uri(base / "mlruns")
        version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(
            MODEL_NAME, str(result.version)
        )
        forget_uris()
    model.meta["registry_description"] = version.description
    model.meta["registry_tags"] = dict(version.tags)
    return result, model


def test_a_ranker_without_signal_is_replaced_by_the_best_baseline(
    noise: tuple[TrainResult, XsellModel],
) -> None:
    result, model = noise
    assert set(result.policies) == set(task_names())
    for task in (s.CROSS_SELL, s.REPLENISH):
        ev = result.evaluations[task]
        assert result.policies[task] == f"{BASELINE_PREFIX}{ev.best_baseline}", task
    for task, policy in result.policies.items():
        ev = result.evaluations[task]
        ranker = ev.value(RANKER, "ndcg_at_10")
        best = ev.value(f"{BASELINE_PREFIX}{ev.best_baseline}", "ndcg_at_10")
        assert (policy == RANKER) == (ranker > best * (1 + CONFIG.promotion_margin)), task
        assert ev.value(policy, "ndcg_at_10") >= min(ranker, best)
    assert model.policies == result.policies


def test_the_policy_is_recorded_in_the_registry(noise: tuple[TrainResult, XsellModel]) -> None:
    result, model = noise
    tags = model.meta["registry_tags"]
    description = model.meta["registry_description"]
    for task, policy in result.policies.items():
        assert tags[f"policy.{task}"] == policy
        assert f"{task}: served by {policy}" in description


def test_serving_returns_the_baseline_order(noise: tuple[TrainResult, XsellModel]) -> None:
    _, model = noise
    snap = model.snapshot
    task = get_task(s.CROSS_SELL)
    baseline = task.baseline(model.policy(task.name).removeprefix(BASELINE_PREFIX))
    cart = [str(snap.product_ids[p]) for p in snap.top.global_top[:2]]
    differs = 0
    for customer in snap.customer_ids[:15]:
        got = model.recommend_one(
            customer_id=str(customer),
            placement="cart",
            product_id=None,
            cart=cart,
            k={task.name: 5},
        )[task.name]
        assert got.policy == model.policy(task.name)
        batch = model.request_batch(
            task=task.name, customer_id=str(customer), placement="cart", product_id=None, cart=cart
        )
        fm = build_features(batch, snap)
        expected = baseline.score(fm.X, fm.columns, snap.config)
        sel = apply_guardrails(batch, snap, fm, expected, np.asarray([5]))
        assert [i.product_id for i in got.items] == [
            str(p) for p in snap.product_ids[fm.product[sel.rows]]
        ]
        by_ranker = apply_guardrails(
            batch, snap, fm, model.ranker_score(fm.X, task.name), np.asarray([5])
        )
        differs += not np.array_equal(fm.product[by_ranker.rows], fm.product[sel.rows])
    assert differs > 0, "the ranker's order should differ somewhere: the policy must matter"


def _evaluation(ranker: float, baseline: float) -> TaskEvaluation:
    metrics = {"ndcg_at_10": ranker, "baseline_cooc.ndcg_at_10": baseline}
    return TaskEvaluation(metrics, pd.DataFrame(), {}, "cooc")


@pytest.mark.parametrize(
    ("ranker", "baseline", "margin", "policy"),
    [
        (0.30, 0.20, 0.0, RANKER),
        (0.20, 0.20, 0.0, "baseline:cooc"),  # a tie is not a win for the ranker
        (0.203, 0.20, 0.02, "baseline:cooc"),  # within the margin
        (0.205, 0.20, 0.02, RANKER),
        (0.10, 0.20, 0.0, "baseline:cooc"),
        (float("nan"), 0.20, 0.0, "baseline:cooc"),  # no ranker
    ],
)
def test_choose_policy(ranker: float, baseline: float, margin: float, policy: str) -> None:
    assert (
        choose_policy(_evaluation(ranker, baseline), primary="ndcg_at_10", margin=margin) == policy
    )


def test_champion_is_replaced_only_if_at_least_as_good_task_by_task() -> None:
    metrics = ["cross_sell.served.ndcg_at_10", "upsell.served.ndcg_at_10"]
    champion = {metrics[0]: 0.30, metrics[1]: 0.50}
    same = promotion_decision(champion, champion, primary_metrics=metrics, ties_pass=True)
    assert same.promote
    worse = {metrics[0]: 0.31, metrics[1]: 0.49}
    assert not promotion_decision(worse, champion, primary_metrics=metrics, ties_pass=True).promote
    better = {metrics[0]: 0.31, metrics[1]: 0.50}
    assert promotion_decision(better, champion, primary_metrics=metrics, ties_pass=True).promote


def test_the_saved_bundle_serves_its_policy(
    noise: tuple[TrainResult, XsellModel], tmp_path: Path
) -> None:
    _, model = noise
    reloaded = XsellModel.load(model.save(tmp_path / "bundle"))
    assert reloaded.policies == model.policies
    queries = pd.DataFrame(
        {
            "query_id": ["a", "b"],
            "customer_id": [str(model.snapshot.customer_ids[0])] * 2,
            "placement": ["cart", "post_purchase"],
            "anchor_product_id": [None, None],
            "cart_product_ids": [
                [str(model.snapshot.product_ids[model.snapshot.top.global_top[0]])],
                [],
            ],
            "as_of": model.snapshot.as_of_timestamp,
            "k": 3,
        }
    )
    out = reloaded.recommend(queries)
    pd.testing.assert_frame_equal(out, model.recommend(queries))
    assert set(out["task"]) <= set(task_names())

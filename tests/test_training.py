"""Tests of the training side: split, ranking mechanics, the training job, MLflow, promotion,
model save/load and batch scoring.

Training is the slow part, so one module-scoped setup generates a small synthetic shop and
trains it once with a reduced configuration into a throwaway MLflow store under ``tmp_path``;
a second module-scoped round trains a deliberately weak challenger and a run that fails midway
against the same store. Every other test reuses what those produced.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401
from typer.testing import CliRunner

import training.train as train_module
from features.batch import ANCHOR, AS_OF, CART, PLACEMENT, QUERY_ID, K
from features.data import schema as s
from features.data.io import Shop, load_shop
from features.data.synthetic import generate_shop
from features.pipeline import TaskSet
from features.recommend import OUTPUT_COLUMNS, placement_defaults
from features.tasks import get_task, task_names
from training import cli
from training.config import RankerConfig, SplitConfig, TrainConfig
from training.evaluate import KS
from training.model import ModelLoadError, XsellModel, load_model
from training.ranker import fit_ranker, query_groups, trainable_rows
from training.recommend import read_queries
from training.tracking import CHALLENGER, CHAMPION, Tracker, tracking_uri
from training.train import TrainResult, data_fingerprint, make_split, train

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
# One stump on a random 5% of the features: deterministically far below FAST on this shop
# (NDCG@10 about 0.14 vs 0.27 for cross-sell, 0.43 vs 0.46 for upsell).
WEAK = FAST.model_copy(
    update={
        "ranker": FAST.ranker.model_copy(
            update={
                "max_rounds": 1,
                "early_stopping_rounds": 1,
                "num_leaves": 2,
                "learning_rate": 0.001,
                "feature_fraction": 0.05,
            }
        )
    }
)
RANKING_METRICS = (
    *(f"{name}_at_{k}" for name in ("ndcg", "map", "recall", "hit_rate") for k in KS),
    "mrr",
)


# ------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------


@dataclass
class FitCall:
    """The arguments and result of one ``fit_ranker`` call made by ``train``."""

    fit: TaskSet
    valid: TaskSet
    kwargs: dict[str, Any]
    booster: lgb.Booster


@dataclass
class Trained:
    """The shop, the store and what the first training run produced."""

    shop_dir: Path
    shop: Shop
    root: Path
    result: TrainResult
    aliases: dict[str, int]
    fits: dict[str, FitCall] = field(default_factory=dict)

    def client(self) -> MlflowClient:
        uri = tracking_uri(self.root)
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _aliases(client: MlflowClient) -> dict[str, int]:
    return {a: int(v) for a, v in client.get_registered_model(MODEL_NAME).aliases.items()}


def _versions(client: MlflowClient) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One synthetic shop trained once with FAST into a fresh store (``fit_ranker`` spied)."""
    base = tmp_path_factory.mktemp("training")
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
        mp.setattr(train_module, "fit_ranker", spy)
        result = train(shop_dir, config=FAST, root=root, experiment=EXPERIMENT)
        uri = tracking_uri(root)
        aliases = _aliases(MlflowClient(tracking_uri=uri, registry_uri=uri))
        forget_uris()
    return Trained(shop_dir, load_shop(shop_dir), root, result, aliases, fits)


@dataclass(frozen=True)
class SecondRound:
    """A weak challenger, then a run that failed midway, against the trained store."""

    weak: TrainResult
    aliases_after_weak: dict[str, int]
    versions_after_weak: list[int]
    failed_run_id: str
    aliases_after_failure: dict[str, int]
    versions_after_failure: list[int]


@pytest.fixture(scope="module")
def second_round(trained: Trained) -> SecondRound:
    """Train WEAK (registered, not promoted), then a WEAK run whose evaluation raises."""
    client = trained.client()
    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        weak = train(trained.shop_dir, config=WEAK, root=trained.root, experiment=EXPERIMENT)
        aliases_after_weak = _aliases(client)
        versions_after_weak = _versions(client)

        def boom(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("evaluation exploded")

        mp.setattr(train_module, "evaluate_model", boom)
        with pytest.raises(RuntimeError, match="evaluation exploded"):
            train(trained.shop_dir, config=WEAK, root=trained.root, experiment=EXPERIMENT)
        assert mlflow.active_run() is None
        experiment = client.get_experiment_by_name(EXPERIMENT)
        (latest,) = client.search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
        )
        aliases_after_failure = _aliases(client)
        versions_after_failure = _versions(client)
        forget_uris()
    return SecondRound(
        weak,
        aliases_after_weak,
        versions_after_weak,
        latest.info.run_id,
        aliases_after_failure,
        versions_after_failure,
    )


@pytest.fixture(scope="module")
def model(trained: Trained) -> XsellModel:
    """Version 1, loaded back from the MLflow registry."""
    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        Tracker(experiment=EXPERIMENT, root=trained.root)  # points MLflow at the store
        loaded = load_model(f"models:/{MODEL_NAME}/{trained.result.version}")
        forget_uris()
    return loaded


@pytest.fixture(scope="module")
def model_dir(model: XsellModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 saved as a plain model folder."""
    return model.save(tmp_path_factory.mktemp("model") / "xsell-model")


def _anchor_with_upsell(model: XsellModel, fits: dict[str, FitCall]) -> str:
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


@pytest.fixture(scope="module")
def queries(model: XsellModel, trained: Trained) -> pd.DataFrame:
    """Known and unknown customers, every placement, with and without anchor and cart."""
    snap = model.snapshot
    known = [str(c) for c in snap.customer_ids[:3]]
    top = [str(snap.product_ids[int(p)]) for p in snap.top.global_top[:3]]
    anchor = _anchor_with_upsell(model, trained.fits)
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


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    out = frame.assign(**{CART: frame[CART].map(json.dumps), ANCHOR: frame[ANCHOR].fillna("")})
    out.to_csv(path, index=False)
    return path


def _check_recommendations(out: pd.DataFrame, queries: pd.DataFrame) -> None:
    """The behavioural contract of ``xsell recommend`` output."""
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert set(out[QUERY_ID]) <= set(queries[QUERY_ID])
    q = queries.set_index(QUERY_ID)
    for (qid, task), rows in out.groupby([QUERY_ID, "task"]):
        query = q.loc[qid]
        assert task in placement_defaults(query[PLACEMENT])
        if task == s.UPSELL:
            assert query[PLACEMENT] == "product_page"
            assert isinstance(query[ANCHOR], str)
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert len(rows) <= int(query[K])
        assert rows["product_id"].is_unique
        assert rows["score"].is_monotonic_decreasing
        blocked = set(query[CART]) | ({query[ANCHOR]} if isinstance(query[ANCHOR], str) else set())
        assert not blocked & set(rows["product_id"]), (qid, task)
    upsell_queries = set(out.loc[out["task"] == s.UPSELL, QUERY_ID])
    with_anchor = queries.loc[queries[ANCHOR].notna(), QUERY_ID]
    assert upsell_queries, "no query got upsell rows"
    assert upsell_queries <= set(with_anchor)
    unknown = queries.loc[queries[s.CUSTOMER_ID] == UNKNOWN_CUSTOMER, QUERY_ID]
    cross = set(out.loc[out["task"] == s.CROSS_SELL, QUERY_ID])
    assert set(unknown) <= cross, "unknown customers must still get cross-sell rows"


# ------------------------------------------------------------------------------------------
# 1. Split
# ------------------------------------------------------------------------------------------


def _label_days(config: TrainConfig) -> int:
    return max(config.features.cross_sell_window_days, config.features.upsell_window_days)


def test_default_split_windows_are_ordered_and_hold_out_the_last_test_days(
    trained: Trained,
) -> None:
    split = make_split(trained.shop, FAST, None)
    first, last = trained.shop.time_range()
    assert first <= split.fit_start < split.valid_start < split.valid_end < split.train_until
    assert split.train_until < split.test_end
    assert split.valid_end + pd.Timedelta(days=_label_days(FAST)) <= split.train_until
    assert split.train_until == (last - pd.Timedelta(days=FAST.split.test_days)).normalize()
    assert split.test_end - split.train_until == pd.Timedelta(days=FAST.split.test_days)
    assert split.valid_end - split.valid_start == pd.Timedelta(days=FAST.split.validation_days)
    assert split.valid_start - split.fit_start <= pd.Timedelta(days=FAST.split.train_days)
    assert trained.result.split == split


def test_train_until_is_respected(trained: Trained) -> None:
    until = pd.Timestamp("2025-10-01")
    split = make_split(trained.shop, FAST, until)
    assert split.train_until == until
    assert split.valid_end + pd.Timedelta(days=_label_days(FAST)) <= until
    assert split.fit_start < split.valid_start < split.valid_end < until < split.test_end


def test_too_little_history_raises(trained: Trained, tiny_shop_dir: Path) -> None:
    first, _ = trained.shop.time_range()
    with pytest.raises(ValueError, match="not enough history"):
        make_split(trained.shop, FAST, first + pd.Timedelta(days=30))
    with pytest.raises(ValueError, match="not enough history"):
        make_split(load_shop(tiny_shop_dir), TrainConfig(), None)


# ------------------------------------------------------------------------------------------
# 2. Ranking mechanics
# ------------------------------------------------------------------------------------------


def test_query_groups_of_contiguous_ids() -> None:
    ids = np.array(["a", "a", "b", "c", "c", "c"], dtype=object)
    assert query_groups(ids).tolist() == [2, 1, 3]
    assert query_groups(np.array([7, 7, 3])).tolist() == [2, 1]
    assert query_groups(np.array([], dtype=object)).tolist() == []


def test_query_groups_rejects_non_contiguous_ids() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        query_groups(np.array(["a", "b", "a"], dtype=object))


def test_trainable_rows_drop_all_negative_and_all_positive_queries() -> None:
    ids = np.array(["neg", "neg", "mix", "mix", "mix", "pos", "pos", "one", "ok", "ok"])
    label = np.array([0, 0, 1, 0, 0, 1, 1, 1, 0, 1])
    keep = trainable_rows(ids, label)
    assert keep.dtype == bool
    assert keep.tolist() == [False, False, True, True, True, False, False, False, True, True]
    assert trainable_rows(np.array([], dtype=object), np.array([], dtype=int)).tolist() == []


def test_fit_ranker_raises_without_a_trainable_query(trained: Trained) -> None:
    call = trained.fits[s.UPSELL]
    no_positive = call.fit.select_queries(call.fit.queries["n_positives"].to_numpy() == 0)
    with pytest.raises(ValueError, match="no query has both"):
        fit_ranker(no_positive, call.valid, **call.kwargs)


# ------------------------------------------------------------------------------------------
# 3. Determinism
# ------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_predictions(trained: Trained) -> None:
    """Two fits with bagging and feature sampling on (a slice of) the cross-sell sets agree."""
    call = trained.fits[s.CROSS_SELL]
    fit = call.fit.select_queries(np.arange(len(call.fit.queries)) < 400)
    valid = call.valid.select_queries(np.arange(len(call.valid.queries)) < 200)
    kwargs = {**call.kwargs, "config": FAST.ranker.model_copy(update={"max_rounds": 15})}
    assert kwargs["config"].bagging_fraction < 1
    assert kwargs["config"].feature_fraction < 1
    first = fit_ranker(fit, valid, **kwargs)
    second = fit_ranker(fit, valid, **kwargs)
    assert first.num_trees() > 0
    np.testing.assert_array_equal(first.predict(fit.X), second.predict(fit.X))
    np.testing.assert_array_equal(first.predict(valid.X), second.predict(valid.X))


def test_refit_reproduces_the_trained_booster(trained: Trained) -> None:
    call = trained.fits[s.UPSELL]
    assert call.kwargs["seed"] == FAST.seed
    again = fit_ranker(call.fit, call.valid, **call.kwargs)
    assert again.best_iteration == call.booster.best_iteration
    np.testing.assert_array_equal(again.predict(call.valid.X), call.booster.predict(call.valid.X))


def test_registered_boosters_are_the_trained_ones(trained: Trained, model: XsellModel) -> None:
    for task, call in trained.fits.items():
        np.testing.assert_array_equal(
            model.boosters[task].predict(call.valid.X), call.booster.predict(call.valid.X)
        )
    assert model.meta["run_id"] == trained.result.run_id
    assert model.snapshot.as_of_timestamp == trained.result.split.train_until


# ------------------------------------------------------------------------------------------
# 4. Save -> load -> predict
# ------------------------------------------------------------------------------------------


def test_reload_gives_identical_scores_and_recommendations(
    model: XsellModel, model_dir: Path, trained: Trained, queries: pd.DataFrame
) -> None:
    reloaded = XsellModel.load(model_dir)
    assert sorted(reloaded.boosters) == sorted(model.boosters)
    assert reloaded.policies == model.policies
    for task, call in trained.fits.items():
        assert reloaded.columns(task) == call.fit.columns
        np.testing.assert_array_equal(
            reloaded.boosters[task].predict(call.valid.X),
            model.boosters[task].predict(call.valid.X),
        )
    pd.testing.assert_frame_equal(reloaded.recommend(queries), model.recommend(queries))
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["tasks"] == list(task_names())
    assert meta["policies"] == model.policies
    assert meta["feature_columns"][s.CROSS_SELL] == model.columns(s.CROSS_SELL)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        pytest.param(lambda d: (d / "meta.json").write_text("{not json"), "metadata", id="meta"),
        pytest.param(lambda d: (d / "meta.json").unlink(), "metadata", id="no-meta"),
        pytest.param(lambda d: (d / f"{s.UPSELL}.txt").unlink(), "upsell", id="no-booster"),
        pytest.param(
            lambda d: (d / f"{s.CROSS_SELL}.txt").write_text("garbage"),
            "cross_sell",
            id="bad-booster",
        ),
        pytest.param(
            lambda d: (d / "meta.json").write_text(json.dumps({"format_version": 99})),
            "format",
            id="format",
        ),
        pytest.param(lambda d: (d / "meta.json").write_text("[1]"), "JSON object", id="list"),
        pytest.param(
            lambda d: (d / "meta.json").write_text(json.dumps({"format_version": 2})),
            "no rankers or policies",
            id="no-tasks",
        ),
        pytest.param(
            lambda d: (d / "meta.json").write_text(
                json.dumps(
                    {
                        **json.loads((d / "meta.json").read_text()),
                        "policies": {s.UPSELL: "baseline:no-such-heuristic"},
                    }
                )
            ),
            "no baseline",
            id="unknown-policy",
        ),
        pytest.param(lambda d: shutil.rmtree(d / "snapshot"), "snapshot", id="no-snapshot"),
    ],
)
def test_damaged_model_folder_raises_model_load_error(
    model_dir: Path, tmp_path: Path, damage: Callable[[Path], object], match: str
) -> None:
    folder = shutil.copytree(model_dir, tmp_path / "copy")
    damage(folder)
    with pytest.raises(ModelLoadError, match=match):
        XsellModel.load(folder)


def test_load_model_of_a_missing_folder_or_uri_raises(tmp_path: Path, trained: Trained) -> None:
    Tracker(experiment=EXPERIMENT, root=trained.root)
    with pytest.raises(ModelLoadError):
        load_model(f"models:/{MODEL_NAME}/99")
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------------
# 5. The first run in MLflow
# ------------------------------------------------------------------------------------------


def test_first_run_registers_version_1_as_champion_and_challenger(trained: Trained) -> None:
    result = trained.result
    assert result.version == 1
    assert result.promoted
    assert result.champion_metrics is None
    assert result.reason == "no champion yet"
    assert trained.aliases == {CHAMPION: 1, CHALLENGER: 1}
    assert trained.client().get_model_version(MODEL_NAME, "1").run_id == result.run_id


def test_first_run_logs_metrics_tags_params_and_artifacts(trained: Trained, tmp_path: Path) -> None:
    client = trained.client()
    run = client.get_run(trained.result.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for name in (
        "cross_sell.ndcg_at_10",
        "upsell.ndcg_at_10",
        "upsell.baseline_popular.ndcg_at_5",
        "cross_sell.baseline_cooc_lift.mrr",
        "cross_sell.candidate_recall",
        "cross_sell.candidate_recall.merged",
        "upsell.best_iteration",
        "cross_sell.fit_rows",
    ):
        assert name in metrics, name
    for task, ev in trained.result.evaluations.items():
        assert metrics[f"{task}.ndcg_at_10"] == pytest.approx(ev.metrics["ndcg_at_10"])
    assert not any("@" in name for name in metrics)

    tags = run.data.tags
    assert tags["data_fingerprint"] == data_fingerprint(trained.shop_dir)
    assert tags["git_commit"]
    assert tags["promotion"] == "promoted"
    assert (
        tags["cross_sell.best_baseline"] == trained.result.evaluations[s.CROSS_SELL].best_baseline
    )
    assert run.data.params["ranker.max_rounds"] == str(FAST.ranker.max_rounds)
    assert run.data.params["train_until"] == str(trained.result.split.train_until)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "cross_sell_fit_features"

    def files(path: str | None = None) -> set[str]:
        return {f.path for f in client.list_artifacts(run.info.run_id, path)}

    top = files()
    expected = {"feature_importance.png", "metric_vs_k.png", "promotion.json", "config.json"}
    assert expected <= top
    for task in task_names():
        assert task in top
        assert files(task) == {f"{task}/per_segment.csv", f"{task}/candidate_recall.csv"}
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    recall = pd.read_csv(local / s.CROSS_SELL / "candidate_recall.csv")
    assert "merged" in set(recall["source"])
    assert recall["recall"].between(0, 1).all()
    segments = pd.read_csv(local / s.UPSELL / "per_segment.csv")
    assert {"customer_type", "segment"} <= set(segments["slice"])
    promotion = json.loads((local / "promotion.json").read_text())
    assert promotion["promote"] is True
    assert TrainConfig.model_validate(json.loads((local / "config.json").read_text())) == FAST


# ------------------------------------------------------------------------------------------
# 6. Promotion gate and failed runs
# ------------------------------------------------------------------------------------------


def test_weak_challenger_is_registered_but_not_promoted(
    trained: Trained, second_round: SecondRound
) -> None:
    weak = second_round.weak
    assert weak.version == 2
    assert not weak.promoted
    assert weak.reason.startswith("not promoted")
    assert second_round.aliases_after_weak == {CHAMPION: 1, CHALLENGER: 2}
    assert second_round.versions_after_weak == [1, 2]
    # the champion was re-evaluated on the same holdout: it reproduces its own metrics
    assert weak.champion_metrics is not None
    for task, ev in trained.result.evaluations.items():
        key = f"{task}.served.{FAST.primary_metric}"
        served = ev.value(trained.result.policies[task], FAST.primary_metric)
        assert weak.champion_metrics[key] == pytest.approx(served)
    run = trained.client().get_run(weak.run_id)
    assert run.data.tags["promotion"] == "not promoted"
    cs = trained.result.evaluations[s.CROSS_SELL]
    assert run.data.metrics["champion.cross_sell.served.ndcg_at_10"] == pytest.approx(
        cs.value(trained.result.policies[s.CROSS_SELL], "ndcg_at_10")
    )


def test_failed_run_is_failed_and_changes_nothing(
    trained: Trained, second_round: SecondRound
) -> None:
    client = trained.client()
    failed = client.get_run(second_round.failed_run_id)
    assert failed.info.status == "FAILED"
    assert failed.info.run_id not in {trained.result.run_id, second_round.weak.run_id}
    assert second_round.aliases_after_failure == second_round.aliases_after_weak
    assert second_round.versions_after_failure == second_round.versions_after_weak


# ------------------------------------------------------------------------------------------
# 7. Baselines
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", task_names())
def test_every_baseline_is_evaluated_with_metrics_in_unit_range(
    trained: Trained, task: str
) -> None:
    ev = trained.result.evaluations[task]
    fit = trained.fits[task].fit
    names = {b.name for b in get_task(task).all_baselines()}
    assert {f"source_{src}" for src in fit.sources} <= names
    expected = {
        s.CROSS_SELL: {"popular", "segment_popular", "cooc_lift", "cooc_conf"},
        s.UPSELL: {"popular", "segment_popular", "popular_pricier"},
        s.REPLENISH: {"personal_frequency", "frequency_recency"},
    }
    assert expected[task] <= names
    assert any(n.startswith("source_") for n in names)
    assert ev.best_baseline in names
    for name in names:
        for metric in RANKING_METRICS:
            value = ev.metrics[f"baseline_{name}.{metric}"]
            assert 0.0 <= value <= 1.0, (name, metric, value)
    for metric in (*RANKING_METRICS, "candidate_recall"):
        assert 0.0 <= ev.metrics[metric] <= 1.0, metric
    assert ev.metrics["n_queries"] > 0
    assert not any("@" in key for key in ev.metrics)
    assert 0.0 <= ev.candidate_recall["merged"] <= 1.0


# ------------------------------------------------------------------------------------------
# 8. xsell recommend
# ------------------------------------------------------------------------------------------


def test_recommend_contract_on_a_mixed_batch(model: XsellModel, queries: pd.DataFrame) -> None:
    out = model.recommend(queries)
    _check_recommendations(out, queries)
    empty = model.recommend(queries.iloc[:0])
    assert list(empty.columns) == list(OUTPUT_COLUMNS)
    assert len(empty) == 0


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_recommend_command_with_the_champion(
    trained: Trained,
    model: XsellModel,
    queries: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(trained.root))
    path = tmp_path / f"queries.{fmt}"
    if fmt == "csv":
        _write_csv(queries, path)
    else:
        queries.to_parquet(path, index=False)
    out_path = tmp_path / "out" / f"recs.{fmt}"
    result = CliRunner().invoke(
        cli.app,
        [
            "recommend",
            "--data",
            str(trained.shop_dir),
            "--queries",
            str(path),
            "--out",
            str(out_path),
            "--model",
            f"models:/{MODEL_NAME}@{CHAMPION}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"for {len(queries)} queries" in result.output
    out = (
        pd.read_csv(out_path, dtype={QUERY_ID: str}) if fmt == "csv" else pd.read_parquet(out_path)
    )
    _check_recommendations(out, queries)
    expected = model.recommend(queries)
    pd.testing.assert_frame_equal(
        out[["query_id", "task", "rank", "product_id"]],
        expected[["query_id", "task", "rank", "product_id"]],
        check_dtype=False,
    )
    np.testing.assert_allclose(out["score"], expected["score"], rtol=1e-6)


@pytest.mark.parametrize("column", [PLACEMENT, CART, K])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_read_queries_missing_column_is_a_clear_error(
    queries: pd.DataFrame, tmp_path: Path, column: str, fmt: str
) -> None:
    frame = queries.drop(columns=[column])
    path = tmp_path / f"queries.{fmt}"
    if fmt == "csv":
        frame.assign(**{ANCHOR: frame[ANCHOR].fillna("")}).to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    with pytest.raises(ValueError, match=rf"missing column\(s\) \['{column}'\]"):
        read_queries(path)


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        pytest.param(CART, "P1;P2", "JSON lists", id="cart-not-json"),
        pytest.param(K, "2.5", "whole number", id="k-fraction"),
        pytest.param(K, "0", "whole number", id="k-zero"),
        pytest.param(AS_OF, "yesterday", "as_of", id="as-of"),
    ],
)
def test_read_queries_rejects_malformed_values(
    queries: pd.DataFrame, tmp_path: Path, column: str, value: str, match: str
) -> None:
    raw = pd.read_csv(_write_csv(queries, tmp_path / "ok.csv"), dtype=str, keep_default_na=False)
    raw.loc[1, column] = value
    raw.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=match):
        read_queries(tmp_path / "bad.csv")


def test_read_queries_round_trips_a_csv(queries: pd.DataFrame, tmp_path: Path) -> None:
    got = read_queries(_write_csv(queries, tmp_path / "queries.csv"))
    assert got[CART].tolist() == queries[CART].tolist()
    pd.testing.assert_series_equal(got[ANCHOR].isna(), queries[ANCHOR].isna())
    assert got[ANCHOR].dropna().tolist() == queries[ANCHOR].dropna().tolist()
    assert got[K].tolist() == queries[K].tolist()
    assert (got[AS_OF] == queries[AS_OF]).all()


def test_recommend_rejects_an_unknown_placement(model: XsellModel, queries: pd.DataFrame) -> None:
    bad = queries.assign(**{PLACEMENT: queries[PLACEMENT].where(queries.index != 2, "homepage")})
    with pytest.raises(ValueError, match="homepage"):
        model.recommend(bad)


def test_recommend_command_missing_column_exits_2(
    trained: Trained,
    model_dir: Path,
    queries: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(trained.root))  # not the repo's
    path = _write_csv(queries.drop(columns=[K]), tmp_path / "queries.csv")
    argv = ["xsell", "recommend", "--data", str(trained.shop_dir), "--queries", str(path)]
    argv += ["--out", str(tmp_path / "recs.csv"), "--model", str(model_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "missing column" in err
    assert "'k'" in err
    assert not (tmp_path / "recs.csv").exists()


# ------------------------------------------------------------------------------------------
# 9. The one-query path
# ------------------------------------------------------------------------------------------


def test_recommend_one_unknown_customer_falls_back(model: XsellModel) -> None:
    got = model.recommend_one(
        customer_id=UNKNOWN_CUSTOMER,
        placement="cart",
        product_id=None,
        cart=[],
        k={s.CROSS_SELL: 3, s.UPSELL: 3},
    )
    assert set(got) == {s.CROSS_SELL}
    result = got[s.CROSS_SELL]
    assert result.fallback is True
    assert 0 < len(result.items) <= 3
    assert all(item.price > 0 for item in result.items)


def test_recommend_one_known_customer_no_fallback_and_cart_excluded(
    model: XsellModel, trained: Trained
) -> None:
    snap = model.snapshot
    customer = str(snap.customer_ids[0])
    cart = [str(snap.product_ids[int(p)]) for p in snap.top.global_top[:2]]
    anchor = _anchor_with_upsell(model, trained.fits)
    got = model.recommend_one(
        customer_id=customer,
        placement="product_page",
        product_id=anchor,
        cart=[*cart, "P-unknown"],
        k={s.CROSS_SELL: 3, s.UPSELL: 2},
    )
    assert set(got) == {s.CROSS_SELL, s.UPSELL}
    for task, want in ((s.CROSS_SELL, 3), (s.UPSELL, 2)):
        result = got[task]
        assert not result.fallback
        assert 0 < len(result.items) <= want
        ids = [item.product_id for item in result.items]
        assert not set(ids) & {*cart, anchor}
        assert all(item.reason for item in result.items)
    assert any("P-unknown" in w for w in got[s.CROSS_SELL].warnings)

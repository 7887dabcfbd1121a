"""The training job (``training/train.py``): the time split, the first run in MLflow (metrics,
tags, artifacts, registration), and a second round against the shared store: a deliberately weak
challenger (registered, not promoted) and a run that fails midway (changes nothing)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401
from trained_model import (
    EXPERIMENT,
    FAST,
    MODEL_NAME,
    Trained,
    aliases_of,
    versions_of,
)

import training.train as train_module
from features.data import schema as s
from features.data.io import load_shop
from features.recommend import RANKER
from features.tasks import task_names
from training.config import TrainConfig
from training.evaluate import HEADLINE_METRICS
from training.progress import Progress
from training.tracking import CHALLENGER, CHAMPION, EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from training.train import TrainResult, data_fingerprint, make_split, promotion_against, train

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


@dataclass(frozen=True)
class SecondRound:
    """A weak challenger, then a run that failed midway, against the trained store."""

    versions_before: list[int]
    weak: TrainResult
    aliases_after_weak: dict[str, int]
    versions_after_weak: list[int]
    failed_run_id: str
    aliases_after_failure: dict[str, int]
    versions_after_failure: list[int]


@pytest.fixture(scope="module")
def second_round(trained: Trained) -> SecondRound:
    """Train WEAK (registered, not promoted), then a WEAK run whose evaluation raises.

    The store is shared with other modules, which may have registered versions before: the
    assertions compare with ``versions_before``, never with fixed version numbers.
    """
    client = trained.client()
    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        versions_before = versions_of(client)
        weak = train(trained.shop_dir, config=WEAK, root=trained.root, experiment=EXPERIMENT)
        aliases_after_weak = aliases_of(client)
        versions_after_weak = versions_of(client)

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
        aliases_after_failure = aliases_of(client)
        versions_after_failure = versions_of(client)
        forget_uris()
    return SecondRound(
        versions_before,
        weak,
        aliases_after_weak,
        versions_after_weak,
        latest.info.run_id,
        aliases_after_failure,
        versions_after_failure,
    )


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
    # a few headline metrics per task with stable names; everything else is in tables
    allowed = {"best_iteration", "fit_rows", "fit_queries", *HEADLINE_METRICS}
    assert {name.split(".", 1)[1] for name in metrics} <= allowed, sorted(metrics)
    assert len(metrics) <= len(allowed) * len(task_names())
    assert not any("baseline_" in name or "@" in name for name in metrics)
    for name in ("upsell.best_iteration", "cross_sell.fit_rows"):
        assert name in metrics, name
    for task, ev in trained.result.evaluations.items():
        policy = trained.result.policies[task]
        assert metrics[f"{task}.served.ndcg_at_10"] == pytest.approx(ev.value(policy, "ndcg_at_10"))
        assert metrics[f"{task}.served_is_ranker"] == float(policy == RANKER)
        assert metrics[f"{task}.candidate_recall"] == pytest.approx(ev.metrics["candidate_recall"])
        if ev.has_ranker:
            assert metrics[f"{task}.ndcg_at_10"] == pytest.approx(ev.metrics["ndcg_at_10"])
            assert metrics[f"{task}.hit_rate_at_10"] == pytest.approx(ev.metrics["hit_rate_at_10"])
            best = ev.metrics[f"baseline_{ev.best_baseline}.ndcg_at_10"]
            assert metrics[f"{task}.lift_over_best_baseline"] == pytest.approx(
                ev.metrics["ndcg_at_10"] / best
            )

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
    expected = {
        "feature_importance.png",
        "metric_vs_k.png",
        "baselines.png",
        "promotion.json",
        "config.json",
    }
    assert expected <= top
    tables = {"per_segment", "candidate_recall", "baselines", "item_kinds", "metrics"}
    for task in task_names():
        assert task in top
        logged = files(task)
        assert {f"{task}/{name}.csv" for name in tables} <= logged
        # the per-source share of the ranker's top 10: only where the task has a ranker
        contribution = f"{task}/source_contribution.csv"
        assert logged <= {*(f"{task}/{name}.csv" for name in tables), contribution}
        assert (contribution in logged) == (trained.result.evaluations[task].has_ranker)
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    recall = pd.read_csv(local / s.CROSS_SELL / "candidate_recall.csv")
    assert "merged" in set(recall["source"])
    assert recall["recall"].between(0, 1).all()
    # model vs every baseline: what used to be hundreds of metrics, one table per task
    for task, ev in trained.result.evaluations.items():
        table = pd.read_csv(local / task / "baselines.csv").set_index("policy")
        names = {
            k.split(".")[0].removeprefix("baseline_")
            for k in ev.metrics
            if k.startswith("baseline_")
        }
        assert {f"baseline:{n}" for n in names} <= set(table.index)
        assert (RANKER in table.index) == ev.has_ranker
        assert table.loc[f"baseline:{ev.best_baseline}", "best_baseline"]
        assert table["served"].sum() == 1
        assert table.loc[trained.result.policies[task], "served"]
        assert table["ndcg_at_10"].is_monotonic_decreasing
        everything = pd.read_csv(local / task / "metrics.csv").set_index("metric")["value"]
        assert set(everything.index) == set(ev.metrics)
    upsell = pd.read_csv(local / s.UPSELL / "baselines.csv").set_index("policy")
    ev = trained.result.evaluations[s.UPSELL]
    assert upsell.loc["baseline:popular", "ndcg_at_5"] == pytest.approx(
        ev.metrics["baseline_popular.ndcg_at_5"]
    )
    cross = pd.read_csv(local / s.CROSS_SELL / "baselines.csv").set_index("policy")
    assert cross.loc["baseline:cooc_lift", "mrr"] == pytest.approx(
        trained.result.evaluations[s.CROSS_SELL].metrics["baseline_cooc_lift.mrr"]
    )
    kinds = pd.read_csv(local / s.CROSS_SELL / "item_kinds.csv")
    assert set(kinds["item_kind"]) <= {"new_items", "rebuy_items"} and len(kinds)
    assert {"policy", "n_queries", "candidate_recall", "ndcg_at_10"} <= set(kinds.columns)
    segments = pd.read_csv(local / s.UPSELL / "per_segment.csv")
    assert {"customer_type", "segment"} <= set(segments["slice"])
    promotion = json.loads((local / "promotion.json").read_text())
    assert promotion["promote"] is True
    # the registered version: description and tags (policies, data range, promotion)
    version = client.get_model_version(MODEL_NAME, str(trained.result.version))
    assert version.description.startswith(f"data {tags['data_range']}")
    assert "promotion: no champion yet" in version.description
    assert version.tags["data_range"] == tags["data_range"]
    assert version.tags["train_range"] == tags["train_range"]
    assert version.tags["promotion"] == "promoted"
    assert version.tags["promotion.reason"] == "no champion yet"
    for task, policy in trained.result.policies.items():
        assert version.tags[f"policy.{task}"] == policy
    # the experiment opens on its training runs in the MLflow UI (not the GenAI overview)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert TrainConfig.model_validate(json.loads((local / "config.json").read_text())) == FAST


# ------------------------------------------------------------------------------------------
# 6. Promotion gate and failed runs
# ------------------------------------------------------------------------------------------


def test_weak_challenger_is_registered_but_not_promoted(
    trained: Trained, second_round: SecondRound
) -> None:
    weak = second_round.weak
    assert weak.version == max(second_round.versions_before) + 1
    assert not weak.promoted
    assert weak.reason.startswith("not promoted")
    assert second_round.aliases_after_weak == {CHAMPION: 1, CHALLENGER: weak.version}
    assert second_round.versions_after_weak == [*second_round.versions_before, weak.version]
    # the champion was re-evaluated on the same holdout: it reproduces its own metrics
    assert weak.champion_metrics is not None
    for task, ev in trained.result.evaluations.items():
        key = f"{task}.served.{FAST.primary_metric}"
        served = ev.value(trained.result.policies[task], FAST.primary_metric)
        assert weak.champion_metrics[key] == pytest.approx(served)
    run = trained.client().get_run(weak.run_id)
    assert run.data.tags["promotion"] == "not promoted"
    version = trained.client().get_model_version(MODEL_NAME, str(weak.version))
    assert version.tags["promotion"] == "not promoted"
    assert version.tags["promotion.reason"].startswith("not promoted")
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
# 7. Progress: message lines, and bars with an ETA on a terminal
# ------------------------------------------------------------------------------------------


def test_progress_bars_count_cutoffs_rounds_and_complete() -> None:
    stream, said = io.StringIO(), []
    report = Progress(said.append, bars=True, stream=stream)
    with report.cutoffs("cross_sell fit features", 3) as callback:
        for day in ("07-16", "07-30", "08-13"):
            callback(f"cut-off 2025-{day} (cross_sell 10)")
        report("a message above the bar")
    with report.step("upsell fit", 50, unit="rounds") as step:
        lgb_callback = report.lightgbm_callback(step)
        for _ in range(7):  # early stopping: the bar still completes
            lgb_callback(None)
    drawn = stream.getvalue()
    assert "cross_sell fit features: 100%" in drawn and "3/3 cut-offs" in drawn
    assert "upsell fit: 100%" in drawn and "50/50 rounds" in drawn
    assert said == ["a message above the bar"]


def test_progress_without_bars_only_says_messages() -> None:
    stream, said = io.StringIO(), []
    report = Progress.of(said.append)
    assert not report.bars
    with report.cutoffs("x", 3) as callback:
        callback("cut-off 2025-01-01 (x 1)")
    with report.step("y", 5) as step:
        step.advance()
    report("done")
    assert said == ["done"] and stream.getvalue() == ""
    # not a terminal: no bars either
    assert not Progress(said.append, bars=None, stream=io.StringIO()).bars


def test_promotion_against_no_champion_an_outdated_or_an_unreadable_one() -> None:
    served = {"cross_sell.served.ndcg_at_10": 0.3, "upsell.served.ndcg_at_10": 0.5}
    first = promotion_against(served, None)  # no champion, or an outdated one: replaced
    assert first.promote and first.reason == "no champion yet"
    kept = promotion_against(served, {})  # a champion that could not be evaluated is kept
    assert not kept.promote and "champion could not be evaluated" in kept.reason
    worse = promotion_against(served, {"cross_sell.served.ndcg_at_10": 0.31})
    assert not worse.promote and "cross_sell.served.ndcg_at_10" in worse.reason
    better = promotion_against(served, {k: v - 0.01 for k, v in served.items()})
    assert better.promote

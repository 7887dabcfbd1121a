"""The A/B report logged to MLflow (``training/experiment.py``) and ``xsell experiment report``,
on a real event store built in ``tmp_path`` and a throwaway MLflow store beside it.

The store: 10 champion customers (``a0``..``a9``, model ``xsell-ranker/3``) and 10 challenger
customers (``b0``..``b9``, ``xsell-ranker/4``), one recommendation each at 03-01 10:00 with a
cross-sell item ``p1`` (price 10) and an upsell item ``p2`` (price 50), each list impressed as a
whole. Champion: ``a0``, ``a1`` click ``p1``; ``a0`` buys 1 x ``p1`` at 10 (order ``oa0``).
Challenger: ``b0``..``b5`` click ``p1``; ``b0``..``b3`` buy 1 x ``p1`` at 10 and ``b0`` also
1 x ``p2`` at 50 in the same order (``ob0``..``ob3``).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401
from scipy import stats
from typer.testing import CliRunner

from online.records import Feedback, LiveEvent, RecommendationRecord, RecommendedItem
from online.report import ExperimentReport, experiment_report
from online.store import EventStore
from training import cli
from training.experiment import (
    FIGURE_ARTIFACT,
    SUMMARY_ARTIFACT,
    TABLE_ARTIFACT,
    TEXT_ARTIFACT,
    log_report,
    report_metric_name,
    report_metrics,
    report_params,
    report_tags,
)
from training.tracking import Tracker, validate_metric_name

T0 = datetime(2024, 3, 1, 10, 0)
VARIANTS = {  # variant -> (customer prefix, model version, clickers, buyers of p1)
    "champion": ("a", "xsell-ranker/3", 2, 1),
    "challenger": ("b", "xsell-ranker/4", 6, 4),
}


def fill_store(location: Path) -> None:
    """The store of the module docstring."""
    store = EventStore.open(location)
    try:
        feedback: list[Feedback] = []
        events: list[LiveEvent] = []
        for variant, (prefix, version, clickers, buyers) in VARIANTS.items():
            for i in range(10):
                rid, customer = f"r-{prefix}{i}", f"{prefix}{i}"
                store.add_recommendation(
                    RecommendationRecord(
                        recommendation_id=rid,
                        customer_id=customer,
                        placement="cart",
                        variant=variant,
                        model_version=version,
                        ts=T0,
                        items=(
                            RecommendedItem("cross_sell", 1, "p1", 0.9, 10.0),
                            RecommendedItem("upsell", 1, "p2", 0.8, 50.0),
                        ),
                    )
                )
                feedback.append(Feedback(f"imp-{rid}", rid, "impression", None, T0))
                if i < clickers:
                    feedback.append(
                        Feedback(f"click-{rid}", rid, "click", "p1", T0 + timedelta(minutes=1))
                    )
                if i < buyers:
                    bought = [("p1", 10.0)] + (
                        [("p2", 50.0)] if variant == "challenger" and i == 0 else []
                    )
                    for product, price in bought:
                        events.append(
                            LiveEvent(
                                event_id=f"e-{customer}-{product}",
                                event_type="purchase",
                                customer_id=customer,
                                product_id=product,
                                ts=T0 + timedelta(hours=2),
                                order_id=f"o{customer}",
                                unit_price=price,
                                quantity=1.0,
                            )
                        )
        store.add_feedback(feedback)
        store.add_events(events)
    finally:
        store.close()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("events") / "store"
    fill_store(folder)
    return folder


@pytest.fixture(scope="module")
def report(store_dir: Path) -> ExperimentReport:
    store = EventStore.open(store_dir, create=False)
    try:
        return experiment_report(store.tables(), control=None)
    finally:
        store.close()


@pytest.fixture(scope="module")
def mlflow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module (creating its schema is the slow part)."""
    root = tmp_path_factory.mktemp("mlruns")
    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        Tracker(experiment=None, root=root)
        forget_uris()
    return root


def _uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').as_posix()}"


def test_the_report_reads_a_real_store(report: ExperimentReport) -> None:
    assert report.control == "champion"
    assert report.variants == ("champion", "challenger")
    assert report.model_versions == {
        "champion": ("xsell-ranker/3",),
        "challenger": ("xsell-ranker/4",),
    }
    # CTR cross_sell: 2/10 vs 6/10; conversion any: champion 1 of 20 impressed pairs,
    # challenger 5 of 20 (four p1, one p2); AOV: champion 10, challenger (60 + 10 + 10 + 10) / 4.
    assert report.value("ctr", "cross_sell", "champion") == pytest.approx(0.2)
    assert report.value("ctr", "cross_sell", "challenger") == pytest.approx(0.6)
    assert report.value("conversion", "any", "challenger") == pytest.approx(5 / 20)
    assert report.value("upgrade_rate", "upsell", "challenger") == pytest.approx(1 / 10)
    assert report.value("aov", "any", "challenger") == pytest.approx(90 / 4)


def test_metric_params_and_tags_are_named_for_mlflow(report: ExperimentReport) -> None:
    metrics = report_metrics(report)
    for name in metrics:
        validate_metric_name(name)
    assert report_metric_name("cross_sell", "ctr", "champion") == "cross_sell.ctr.champion"
    assert metrics["cross_sell.ctr.champion"] == pytest.approx(0.2)
    assert metrics["cross_sell.ctr.challenger"] == pytest.approx(0.6)
    assert metrics["cross_sell.ctr.n.challenger"] == 10
    # pooled p = 8/20 = 0.4: z = 0.4 / sqrt(0.4 * 0.6 * (1/10 + 1/10)) = 1.825742
    z = 0.4 / math.sqrt(0.4 * 0.6 * 0.2)
    assert metrics["cross_sell.ctr.p_value.challenger"] == pytest.approx(2 * stats.norm.sf(z))
    # The control has no comparison; empty cells (AOV has one order: no interval) are skipped.
    assert "cross_sell.ctr.p_value.champion" not in metrics
    assert "any.aov.champion" in metrics and "any.aov.ci_low.champion" not in metrics
    assert all(math.isfinite(v) for v in metrics.values())

    params = report_params(report)
    assert params["control"] == "champion"
    assert params["window_hours"] == 24.0
    assert params["variants"] == "champion=xsell-ranker/3,challenger=xsell-ranker/4"
    tags = report_tags(report)
    assert tags["variant.challenger.model_version"] == "xsell-ranker/4"
    assert tags["variant.challenger.registered_model"] == "xsell-ranker"
    assert tags["variant.challenger.registered_version"] == "4"
    assert tags["registered_model"] == "xsell-ranker"


def test_log_report_writes_one_run(
    report: ExperimentReport, mlflow_root: Path, tmp_path: Path
) -> None:
    run_id = log_report(report, experiment_name="ab", run_name="ab test", root=mlflow_root)
    uri = _uri(mlflow_root)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "ab test"
    assert client.get_experiment(run.info.experiment_id).name == "ab"
    assert run.data.metrics == pytest.approx(report_metrics(report))
    assert run.data.params["control"] == "champion"
    assert run.data.params["variant.champion.model_version"] == "xsell-ranker/3"
    assert run.data.tags["variant.champion.model_version"] == "xsell-ranker/3"
    assert run.data.tags["verdict"] in {"none", "champion", "challenger"}

    listed = {a.path for a in client.list_artifacts(run_id, "experiment")}
    assert listed == {TABLE_ARTIFACT, FIGURE_ARTIFACT, TEXT_ARTIFACT, SUMMARY_ARTIFACT}
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="experiment", dst_path=str(tmp_path), tracking_uri=uri
        )
    )
    table = pd.read_csv(local / "report.csv")
    assert list(table.columns) == list(report.table.columns)
    assert len(table) == len(report.table)
    assert (local / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ctr" in (local / "report.txt").read_text()
    summary = json.loads((local / "summary.json").read_text())
    assert summary["control"] == "champion"
    assert summary["verdicts"]["ctr"]["cross_sell"] is None  # p = 0.068


# --------------------------------------------------------------------------- the command


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_prints_the_table_the_verdict_and_the_run(
    store_dir: Path, mlflow_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_uri_env(monkeypatch)
    uri = _uri(mlflow_root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, out, err = _invoke("experiment", "report", "--store", str(store_dir))
    forget_uris()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("A/B report: 2 variant(s), control champion")
    assert any(line.startswith("ctr ") and "challenger" in line for line in lines)
    assert "verdict (revenue_per_impression, any, alpha 0.05):" in out
    run_line = lines[-1]
    assert run_line.startswith("run ")
    run_id = run_line.split()[1]
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id).name == (
        "xsell-experiments"
    )
    assert run.data.metrics["cross_sell.ctr.challenger"] == pytest.approx(0.6)


def test_cli_options(store_dir: Path) -> None:
    code, out, err = _invoke(
        "experiment", "report", "--store", str(store_dir), "--no-mlflow",
        "--control", "challenger", "--window-hours", "1",
    )  # fmt: skip
    assert code == 0, err
    assert "control challenger, attribution window 1 h" in out
    assert out.rstrip().endswith("not logged to MLflow (--no-mlflow)")
    # Purchases come 2 h after the recommendations: nothing converts within 1 h.
    assert any(
        line.startswith("conversion") and " any " in line and "0.0000" in line
        for line in out.splitlines()
    )


def _one_error(code: int, out: str, err: str, text: str) -> None:
    assert code == 2
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert text in errors[0], err


def test_cli_on_an_empty_store_is_one_error_line(tmp_path: Path) -> None:
    EventStore.open(tmp_path / "empty").close()
    _one_error(
        *_invoke("experiment", "report", "--store", str(tmp_path / "empty"), "--no-mlflow"),
        "no impressions",
    )


def test_cli_expected_failures_are_one_error_line(store_dir: Path, tmp_path: Path) -> None:
    base = ["experiment", "report", "--no-mlflow", "--store"]
    _one_error(*_invoke(*base, str(tmp_path / "nowhere")), "nowhere")
    assert not (tmp_path / "nowhere").exists()  # a report never creates a store
    _one_error(*_invoke(*base, str(store_dir), "--control", "nope"), "nope")
    _one_error(*_invoke(*base, str(store_dir), "--window-hours", "0"), "--window-hours")

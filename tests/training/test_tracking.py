"""The MLflow wrapper against a throwaway SQLite store under ``tmp_path``.

Logging a model is the slow part, so one module-scoped store logs a single stand-in pyfunc
model and the registry tests register it under names of their own.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401

from training.tracking import (
    CHALLENGER,
    CHAMPION,
    DEFAULT_MODEL_NAME,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MAX_PARAM_VALUE_LENGTH,
    Tracker,
    artifact_root,
    compare_runs_url,
    compare_versions_url,
    promotion_decision,
    tracking_uri,
)

PIP_REQUIREMENTS = ["mlflow", "pandas"]


class OffsetModel(mlflow.pyfunc.PythonModel):
    """Stand-in for the real pyfunc: ``score = 2 * x + offset``, offset read from a json file."""

    def load_context(self, context):
        folder = Path(context.artifacts["model_dir"])
        self.offset = json.loads((folder / "meta.json").read_text())["offset"]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"score": 2.0 * model_input["x"].astype(float) + self.offset})


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty ``mlflow.db`` (creating the schema takes ~1 s; copying it, ms)."""
    root = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        Tracker(experiment="template", root=root)
        forget_uris()
    return root / "mlflow.db"


@pytest.fixture
def root(tmp_path: Path, empty_db: Path) -> Path:
    """A fresh store folder under ``tmp_path``, started from the empty database."""
    folder = tmp_path / "mlruns"
    folder.mkdir()
    shutil.copy(empty_db, folder / "mlflow.db")
    return folder


@dataclass(frozen=True)
class Store:
    root: Path
    model_uri: str
    run_id: str

    def tracker(self) -> Tracker:
        return Tracker(experiment="registry", root=self.root)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, empty_db: Path) -> Iterator[Store]:
    """A store holding one run with one logged stand-in model (logged once per module)."""
    root = tmp_path_factory.mktemp("store")
    shutil.copy(empty_db, root / "mlflow.db")
    model_dir = tmp_path_factory.mktemp("model_dir")
    (model_dir / "meta.json").write_text(json.dumps({"offset": 0.5}))
    example = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        tracker = Tracker(experiment="registry", root=root)
        with tracker.start_run("train") as run:
            uri = tracker.log_model(
                OffsetModel(),
                model_dir,
                example,
                pd.DataFrame({"score": [2.5, 4.5, 6.5]}),
                pip_requirements=PIP_REQUIREMENTS,
            )
        forget_uris()
    yield Store(root=root, model_uri=uri, run_id=run.info.run_id)


# --------------------------------------------------------------------------- store location


def test_tracking_uri_root_then_env_then_repo_mlruns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    assert tracking_uri(root) == f"sqlite:///{root.resolve()}/mlflow.db"
    assert root.is_dir()
    assert artifact_root(root) == root.resolve() / "artifacts"

    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(repo / "pkg")
    assert tracking_uri() == f"sqlite:///{repo.resolve()}/mlruns/mlflow.db"
    assert (repo / "mlruns").is_dir()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri() == "http://tracking:5000"
    assert artifact_root() is None
    assert tracking_uri(root) == f"sqlite:///{root.resolve()}/mlflow.db"


# --------------------------------------------------------------------------- runs and logging


def test_run_logs_params_metrics_tags_inputs_and_artifacts(tmp_path: Path, root: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracker = Tracker(experiment="unit", root=root)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    frame = pd.DataFrame({"query_id": ["q1", "q1"], "feature": [0.1, 0.2], "label": [1, 0]})
    with tracker.start_run("train", tags={"data": "tiny", "rows": 2}) as run:
        logged = tracker.log_params(
            {"lgbm": {"num_leaves": 31, "objective": "lambdarank"}, "seed": 0, "big": "x" * 7000}
        )
        tracker.log_metrics({"cross_sell.ndcg_at_10": 0.25, "upsell.recall_at_3": 0.5})
        tracker.set_tags({"stage": "test"})
        tracker.log_input(frame, name="cross_sell.train", context="training", targets="label")
        tracker.log_dict({"a": 1}, "config/resolved.json")
        tracker.log_table_csv(frame, "eval/slices.csv")
        tracker.log_figure(fig, "plots/line.png")
    plt.close(fig)

    client = MlflowClient(tracking_uri=tracking_uri(root))
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "train"
    assert got.info.artifact_uri.startswith((root.resolve() / "artifacts").as_uri())
    params = got.data.params
    assert params["lgbm.num_leaves"] == "31"
    assert params["lgbm.objective"] == "lambdarank"
    assert params["seed"] == "0"
    assert len(params["big"]) == MAX_PARAM_VALUE_LENGTH
    assert params["big"].endswith("[truncated]")
    assert logged == params
    assert got.data.metrics == {"cross_sell.ndcg_at_10": 0.25, "upsell.recall_at_3": 0.5}
    assert tracker.run_metrics(run.info.run_id) == got.data.metrics
    assert {"data": "tiny", "rows": "2", "stage": "test"}.items() <= got.data.tags.items()
    (dataset_input,) = got.inputs.dataset_inputs
    assert dataset_input.dataset.name == "cross_sell.train"
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    def files(path: str | None = None) -> list[str]:
        return [f.path for f in client.list_artifacts(run.info.run_id, path)]

    assert sorted(files()) == ["config", "eval", "plots"]
    assert files("eval") == ["eval/slices.csv"]
    assert files("plots") == ["plots/line.png"]
    local = Path(client.download_artifacts(run.info.run_id, "eval/slices.csv", str(tmp_path)))
    pd.testing.assert_frame_equal(pd.read_csv(local), frame)


def test_metric_name_with_at_raises_and_logs_nothing(root: Path) -> None:
    tracker = Tracker(experiment="unit", root=root)
    with tracker.start_run("train") as run:
        with pytest.raises(ValueError, match="ndcg_at_10"):
            tracker.log_metrics({"recall": 0.1, "ndcg@10": 0.3})
        with pytest.raises(ValueError):
            tracker.log_metrics({"../up": 0.1})
    assert tracker.run_metrics(run.info.run_id) == {}


def test_non_finite_metrics_are_skipped(root: Path) -> None:
    tracker = Tracker(experiment="unit", root=root)
    with tracker.start_run("train") as run:
        logged = tracker.log_metrics({"ok": 1.0, "nan": math.nan, "inf": math.inf, "neg": -2})
    assert logged == {"ok": 1.0, "neg": -2.0}
    assert tracker.run_metrics(run.info.run_id) == logged


def test_one_run_at_a_time_and_no_logging_outside_a_run(root: Path) -> None:
    tracker = Tracker(experiment="unit", root=root)
    with pytest.raises(RuntimeError, match="no open run"):
        tracker.log_metrics({"a": 1.0})
    with (
        tracker.start_run("outer"),
        pytest.raises(RuntimeError, match="already active"),
        tracker.start_run("inner"),
    ):
        pass
    assert mlflow.active_run() is None
    runs = MlflowClient(tracking_uri=tracker.uri).search_runs([tracker.experiment_id])
    assert [r.info.run_name for r in runs] == ["outer"]


def test_existing_experiment_is_reused(root: Path) -> None:
    first = Tracker(experiment="unit", root=root)
    assert Tracker(experiment="unit", root=root).experiment_id == first.experiment_id


def test_experiments_open_on_their_training_runs(root: Path) -> None:
    """MLflow 3's UI reads ``mlflow.experimentKind``: ``custom_model_development`` opens the
    training runs instead of the GenAI overview, also for an experiment made without it."""
    tracker = Tracker(experiment="kind", root=root)
    client = tracker.client
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == (
        "custom_model_development"
    )
    old = client.create_experiment("made-elsewhere")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert Tracker(experiment="made-elsewhere", root=root).experiment_id == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_compare_urls_follow_the_ui_routes() -> None:
    """``#/compare-runs?runs=<JSON>&experiments=<JSON>`` and the model-version compare page,
    percent-encoded (the UI decodes with ``qs.parse`` before ``JSON.parse``)."""
    url = compare_runs_url(["r1", "r2"], ["3", "3"], ui="http://h:5000/")
    base, query = url.split("#/compare-runs?")
    assert base == "http://h:5000/"
    params = dict(part.split("=", 1) for part in query.split("&"))
    assert json.loads(unquote(params["runs"])) == ["r1", "r2"]
    assert json.loads(unquote(params["experiments"])) == ["3"]
    url = compare_versions_url("xsell-ranker", {1: "r1", 2: "r2"}, ui="http://h:5000")
    base, query = url.split("#/compare-model-versions?")
    params = dict(part.split("=", 1) for part in query.split("&"))
    assert json.loads(unquote(params["name"])) == "xsell-ranker"
    assert json.loads(unquote(params["runs"])) == {"1": "r1", "2": "r2"}


# --------------------------------------------------------------------------- promotion rule


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "promote"),
    [
        pytest.param({"a": 0.1, "b": 0.1}, None, 0.0, True, id="no-champion"),
        pytest.param({"a": 0.3, "b": 0.5}, {"a": 0.2, "b": 0.4}, 0.0, True, id="better-on-all"),
        pytest.param({"a": 0.3, "b": 0.3}, {"a": 0.2, "b": 0.4}, 0.0, False, id="worse-on-one"),
        pytest.param({"a": 0.3, "b": 0.4}, {"a": 0.2, "b": 0.4}, 0.0, False, id="tie-is-no-win"),
        pytest.param({"a": 0.205, "b": 0.5}, {"a": 0.2, "b": 0.4}, 0.05, False, id="within-margin"),
        pytest.param({"a": 0.25, "b": 0.5}, {"a": 0.2, "b": 0.4}, 0.05, True, id="beyond-margin"),
        pytest.param({"a": 0.01, "b": 0.5}, {"a": 0.0, "b": 0.4}, 0.0, True, id="zero-champion"),
        pytest.param({"a": 0.01, "b": 0.5}, {"a": 0.0, "b": 0.4}, 0.05, False, id="zero-absolute"),
        pytest.param({"a": -0.9, "b": 0.5}, {"a": -1.0, "b": 0.4}, 0.05, True, id="negative"),
        pytest.param({"a": 0.3}, {"a": 0.2, "b": 0.4}, 0.0, False, id="challenger-missing"),
        pytest.param({"a": 0.3, "b": 0.5}, {"a": 0.2}, 0.0, False, id="champion-missing"),
        pytest.param({"a": math.nan, "b": 0.5}, None, 0.0, False, id="nan-challenger"),
    ],
)
def test_promotion_decision(
    challenger: dict[str, float], champion: dict[str, float] | None, margin: float, promote: bool
) -> None:
    decision = promotion_decision(challenger, champion, primary_metrics=["a", "b"], margin=margin)
    assert decision.promote is promote
    assert [c.metric for c in decision.comparisons] == ["a", "b"]
    assert decision.comparisons[1].challenger == challenger.get("b")
    assert decision.comparisons[1].champion == (None if champion is None else champion.get("b"))
    assert all(c.passed for c in decision.comparisons) is promote
    assert decision.reason.startswith("not promoted") is not promote
    json.dumps(decision.to_dict())


def test_promotion_decision_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="primary_metrics"):
        promotion_decision({"a": 1.0}, None, primary_metrics=[])
    with pytest.raises(ValueError, match="margin"):
        promotion_decision({"a": 1.0}, None, primary_metrics=["a"], margin=-0.1)


# --------------------------------------------------------------------------- registry and aliases


def test_register_gives_consecutive_versions_linked_to_the_run(store: Store) -> None:
    tracker = store.tracker()
    assert tracker.register(store.model_uri, name="register-test") == 1
    assert tracker.register(store.model_uri, name="register-test") == 2
    assert tracker.version_run_id("register-test", 2) == store.run_id


def test_aliases_set_get_and_promote(store: Store) -> None:
    tracker = store.tracker()
    assert tracker.get_version_by_alias("no-such-model", CHAMPION) is None
    first = tracker.register(store.model_uri, name="alias-test")
    second = tracker.register(store.model_uri, name="alias-test")
    assert tracker.get_version_by_alias("alias-test", CHAMPION) is None

    tracker.set_alias("alias-test", CHALLENGER, first)
    assert int(tracker.get_version_by_alias("alias-test", CHALLENGER).version) == first
    assert tracker.promote("alias-test", first) is None
    tracker.set_alias("alias-test", CHALLENGER, second)
    assert tracker.promote("alias-test", second) == first
    assert int(tracker.get_version_by_alias("alias-test", CHAMPION).version) == second
    assert int(tracker.get_version_by_alias("alias-test", CHALLENGER).version) == second


def test_failed_run_is_marked_failed_and_leaves_aliases_alone(store: Store) -> None:
    tracker = store.tracker()
    version = tracker.register(store.model_uri, name="failed-test")
    tracker.promote("failed-test", version)
    tracker.set_alias("failed-test", CHALLENGER, version)

    with pytest.raises(RuntimeError, match="boom"), tracker.start_run("doomed") as run:
        tracker.log_metrics({"cross_sell.ndcg_at_10": 0.99})
        raise RuntimeError("boom")

    client = MlflowClient(tracking_uri=tracker.uri, registry_uri=tracker.uri)
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None
    aliases = client.get_registered_model("failed-test").aliases
    assert {alias: int(v) for alias, v in aliases.items()} == {
        CHAMPION: version,
        CHALLENGER: version,
    }


def test_champion_loads_as_pyfunc_and_predicts(store: Store) -> None:
    tracker = store.tracker()
    version = tracker.register(store.model_uri)
    tracker.promote(DEFAULT_MODEL_NAME, version)

    model = mlflow.pyfunc.load_model(f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION}")
    scores = model.predict(pd.DataFrame({"x": [0.0, 10.0]}))
    assert scores["score"].tolist() == [0.5, 20.5]
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["x"]
    assert [c.name for c in model.metadata.get_output_schema().inputs] == ["score"]

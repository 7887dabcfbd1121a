"""The ``xsell`` command line (``training/cli.py``): train, evaluate, promote and export-model
against a store of their own, and the expected failures (one message line, no traceback).

One module-scoped ``xsell train`` (through Typer's ``CliRunner``, in process) trains a
300-customer shop with a tiny YAML config into a temporary SQLite store named by
``MLFLOW_TRACKING_URI``; the other commands use that store. Nothing here moves an alias of the
shared trained model's store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from click.testing import Result
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401
from trained_model import aliases_of, versions_of
from typer.testing import CliRunner

from features.data import schema as s
from features.recommend import XsellModel
from features.tasks import task_names
from training import cli
from training.config import TrainConfig
from training.model import load_model
from training.tracking import CHALLENGER, CHAMPION

MODEL_NAME = "xsell-ranker"
EXPERIMENT = "cli"
# Small and quick; a popularity window set other than the default, through the whole job.
TINY_YAML = """\
seed: 3
features:
  popularity_windows_days: [7, 30, 60]
split:
  train_days: 28
  validation_days: 14
  test_days: 14
  max_queries_per_cutoff: 150
ranker:
  max_rounds: 8
  early_stopping_rounds: 3
  num_threads: 1
"""


@dataclass(frozen=True)
class CliStore:
    """The shop, the config file, the store and what ``xsell train`` printed."""

    shop_dir: Path
    config: Path
    uri: str
    train: Result

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


@pytest.fixture(scope="module")
def store(small_shop_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CliStore:
    base = tmp_path_factory.mktemp("cli")
    config = base / "tiny.yaml"
    config.write_text(TINY_YAML)
    (base / "mlruns").mkdir()
    uri = f"sqlite:///{(base / 'mlruns' / 'mlflow.db').as_posix()}"
    args = ["train", "--data", str(small_shop_dir), "--config", str(config)]
    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        result = CliRunner().invoke(cli.app, [*args, "--experiment", EXPERIMENT])
        forget_uris()
    return CliStore(small_shop_dir, config, uri, result)


@pytest.fixture
def in_store(store: CliStore, monkeypatch: pytest.MonkeyPatch) -> CliStore:
    """``store``, with ``MLFLOW_TRACKING_URI`` naming it for the test (never the repo's)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    return store


def _invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli.app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _champion(store: CliStore) -> XsellModel:
    return load_model(f"models:/{MODEL_NAME}@{CHAMPION}")


# ------------------------------------------------------------------------------------------
# xsell train
# ------------------------------------------------------------------------------------------


def test_train_registers_a_champion_and_prints_the_summary(in_store: CliStore) -> None:
    result = in_store.train
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.output
    assert "registered version 1 (alias challenger): promoted to champion" in out
    client = in_store.client()
    assert aliases_of(client) == {CHAMPION: 1, CHALLENGER: 1}
    version = client.get_model_version(MODEL_NAME, "1")
    assert f"run {version.run_id}" in out
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    # the summary table: one row per task, ending with its served policy
    model = _champion(in_store)
    lines = out.splitlines()
    for task in task_names():
        (row,) = [line for line in lines if line.startswith(f"{task} ")]
        assert row.rstrip().endswith(model.policy(task)), row
        assert f"{task}.ndcg_at_10" in run.data.metrics
    # the YAML file was the run's configuration, nested overrides included
    assert run.data.params["ranker.max_rounds"] == "8"
    from_file = TrainConfig.from_yaml(in_store.config)
    assert from_file.ranker.max_rounds == 8
    assert model.snapshot.config.popularity_windows_days == (7, 30, 60)
    assert (
        model.snapshot.config.popularity_windows_days == from_file.features.popularity_windows_days
    )
    assert "prod_pop_60" in model.columns(s.CROSS_SELL)


def test_train_output_is_xsells_own_lines(in_store: CliStore) -> None:
    """No library notes in normal output: MLflow's registration prints, its CloudPickle and
    integer-schema warnings, its artifact-download bars, INFO logs."""
    out = in_store.train.output
    for noise in (
        "Created version",
        "Successfully registered",
        "CloudPickle",
        "Inferred schema contains integer",
        "Downloading artifacts",
        "INFO",
        "Traceback",
    ):
        assert noise not in out, (noise, out)
    lines = [line for line in out.splitlines() if line.strip()]
    ours = ("  .. ", "task ", "registered version", "run ", "view:", "serve:", *task_names())
    assert all(line.startswith(ours) for line in lines), out


# ------------------------------------------------------------------------------------------
# xsell compare
# ------------------------------------------------------------------------------------------

COMPARE_NAME = "cli-compare"


@dataclass(frozen=True)
class Compared:
    """Two versions of ``cli-compare``: v1 a copy of the store's version 1, v2 trained anew."""

    first: ModelVersion
    second: ModelVersion
    train: Result


@pytest.fixture(scope="module")
def compared(store: CliStore, tmp_path_factory: pytest.TempPathFactory) -> Compared:
    client = store.client()
    config = tmp_path_factory.mktemp("compare") / "other.yaml"
    config.write_text(
        TINY_YAML.replace("seed: 3", "seed: 4").replace("max_rounds: 8", "max_rounds: 4")
        + f"model_name: {COMPARE_NAME}\n"
    )
    args = ["train", "--data", str(store.shop_dir), "--config", str(config)]
    with pytest.MonkeyPatch.context() as mp:
        clear_uri_env(mp)
        mp.setenv("MLFLOW_TRACKING_URI", store.uri)
        source = client.get_model_version(MODEL_NAME, "1")
        client.create_registered_model(COMPARE_NAME)
        client.create_model_version(  # resolves models:/<id> through the global store
            COMPARE_NAME,
            source.source,
            run_id=source.run_id,
            tags=source.tags,
            description=source.description,
        )
        result = CliRunner().invoke(cli.app, [*args, "--experiment", EXPERIMENT])
        forget_uris()
    assert result.exit_code == 0, (result.output, result.exception)
    return Compared(
        client.get_model_version(COMPARE_NAME, "1"),
        client.get_model_version(COMPARE_NAME, "2"),
        result,
    )


def _block(lines: list[str], task: str) -> list[str]:
    """The rows of one task's block of ``xsell compare``."""
    start = lines.index(next(line for line in lines if line.split() == [task]))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))
    return lines[start + 1 : end]


def test_compare_prints_two_versions_side_by_side_with_the_mlflow_link(
    in_store: CliStore, compared: Compared
) -> None:
    assert "compare: xsell compare 1 2" in compared.train.output
    out = _invoke("compare", "1", "2", "--name", COMPARE_NAME).output
    lines = out.splitlines()
    assert lines[0].split() == [f"{COMPARE_NAME}", "v1", f"{COMPARE_NAME}", "v2", "change"]
    client = in_store.client()
    runs = [client.get_run(v.run_id) for v in (compared.first, compared.second)]
    (run_row,) = [line for line in lines if line.startswith("run ")]
    assert run_row.split()[1:] == [r.info.run_id for r in runs]
    (data_row,) = [line for line in lines if line.startswith("data range")]
    assert data_row.count(compared.second.tags["data_range"]) == 2  # the same shop
    (promo_row,) = [line for line in lines if line.startswith("promotion")]
    assert "promoted" in promo_row
    (desc_row,) = [line for line in lines if line.startswith("description")]
    assert compared.second.description.splitlines()[0][:40] in desc_row  # cut to fit
    for task in task_names():
        rows = {row.split()[0]: row.split()[1:] for row in _block(lines, task)}
        assert rows["served"][1:3] == [
            compared.first.tags[f"policy.{task}"],
            compared.second.tags[f"policy.{task}"],
        ]
        for metric in ("served.ndcg_at_10", "candidate_recall"):
            shown = rows[metric][:2]
            assert shown == [f"{r.data.metrics[f'{task}.{metric}']:.4f}" for r in runs], metric
    # the MLflow UI's compare-runs view of the two runs
    (url,) = [line.strip() for line in lines if "#/compare-runs?" in line]
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?")
    params = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    assert json.loads(unquote(params["runs"])) == [r.info.run_id for r in runs]
    assert json.loads(unquote(params["experiments"])) == [runs[0].info.experiment_id]
    assert any("#/compare-model-versions?" in line for line in lines)
    # --verbose (a global option) changes what the libraries may say, not the comparison
    verbose = _invoke("--verbose", "compare", "1", "2", "--name", COMPARE_NAME).output
    assert verbose.splitlines()[: len(lines)] == lines
    assert aliases_of(client) == {CHAMPION: 1, CHALLENGER: 1}


def test_compare_of_an_unknown_version_is_one_error_line(
    in_store: CliStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["xsell", "compare", "1", "99"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    _assert_one_message(captured.out, captured.err, "error:", "99")


# ------------------------------------------------------------------------------------------
# xsell evaluate
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["registry", "folder"])
def test_evaluate_prints_every_task_and_its_served_policy(
    in_store: CliStore, tmp_path: Path, ref: str
) -> None:
    model = _champion(in_store)
    uri = f"models:/{MODEL_NAME}/1" if ref == "registry" else str(model.save(tmp_path / "m"))
    out = _invoke("evaluate", "--data", str(in_store.shop_dir), "--model", uri).output
    heads = [line for line in out.splitlines() if not line.startswith(" ")]
    assert [h.split(":")[0] for h in heads] == list(task_names())
    for task, head in zip(task_names(), heads, strict=True):
        assert f"served policy {model.policy(task)}," in head
        assert "queries, candidate recall" in head and "best baseline" in head
        n_queries = int(head.split(": ")[1].split()[0])
        assert n_queries > 0, head
    assert "ndcg@10=" in out and "mrr=" in out


# ------------------------------------------------------------------------------------------
# xsell promote
# ------------------------------------------------------------------------------------------


def test_promote_moves_the_champion_alias(in_store: CliStore) -> None:
    """Under a name of its own (``--name``): the main model's aliases stay untouched."""
    client = in_store.client()
    name = "cli-promote"
    source = client.get_model_version(MODEL_NAME, "1")
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source.source, run_id=source.run_id)
    assert versions_of(client, name) == [1, 2]

    out = _invoke("promote", "1", "--name", name).output
    assert f"{name} version 1 is now champion (was None)" in out
    assert aliases_of(client, name) == {CHAMPION: 1}
    out = _invoke("promote", "2", "--name", name).output
    assert f"{name} version 2 is now champion (was 1)" in out
    assert aliases_of(client, name) == {CHAMPION: 2}
    assert int(client.get_model_version_by_alias(name, CHAMPION).version) == 2
    assert aliases_of(client) == {CHAMPION: 1, CHALLENGER: 1}


# ------------------------------------------------------------------------------------------
# xsell export-model
# ------------------------------------------------------------------------------------------


def test_export_model_writes_a_loadable_folder(in_store: CliStore, tmp_path: Path) -> None:
    out_dir = tmp_path / "bento_model"
    uri = f"models:/{MODEL_NAME}@{CHAMPION}"
    out = _invoke("export-model", "--model", uri, "--out", str(out_dir)).output
    assert f"wrote model {MODEL_NAME}/1 to {out_dir}" in out
    loaded = XsellModel.load(out_dir)
    assert loaded.meta["model_version"] == f"{MODEL_NAME}/1"
    assert loaded.meta["source_uri"] == uri
    champion = _champion(in_store)
    assert loaded.policies == champion.policies
    assert sorted(loaded.boosters) == sorted(champion.boosters)
    customer = str(loaded.snapshot.customer_ids[0])
    got = loaded.recommend_one(
        customer_id=customer, placement="cart", product_id=None, cart=[], k={s.CROSS_SELL: 3}
    )
    assert got[s.CROSS_SELL].items


# ------------------------------------------------------------------------------------------
# Expected failures: exit 2, one message line, no traceback
# ------------------------------------------------------------------------------------------


def _fail_args(store: CliStore, tmp_path: Path, case: str) -> tuple[list[str], str, str]:
    """``(argv, prefix of the message line, text it must contain)``."""
    shop = str(store.shop_dir)
    if case == "missing-config":
        missing = tmp_path / "nope.yaml"
        return ["train", "--data", shop, "--config", str(missing)], "error:", "nope.yaml"
    if case == "unknown-key":
        bad = tmp_path / "bad.yaml"
        bad.write_text("ranker:\n  max_round: 5\n")
        return ["train", "--data", shop, "--config", str(bad)], "error:", "max_round"
    if case == "not-a-mapping":
        bad = tmp_path / "list.yaml"
        bad.write_text("- 1\n- 2\n")
        return ["train", "--data", shop, "--config", str(bad)], "error:", "must be a mapping"
    if case == "missing-data":
        gone = tmp_path / "no-shop"
        args = ["train", "--data", str(gone), "--config", str(store.config)]
        return args, "invalid data:", "no-shop"  # data errors have their own prefix
    if case == "evaluate-missing-data":
        args = [
            "evaluate",
            "--data",
            str(tmp_path / "no-shop"),
            "--model",
            f"models:/{MODEL_NAME}/1",
        ]
        return args, "invalid data:", "no-shop"
    if case == "evaluate-unknown-model":
        return ["evaluate", "--data", shop, "--model", "models:/nope/1"], "error:", "nope"
    if case == "evaluate-unknown-version":
        args = ["evaluate", "--data", shop, "--model", f"models:/{MODEL_NAME}/99"]
        return args, "error:", "99"
    if case == "export-unknown-alias":
        args = ["export-model", "--model", f"models:/{MODEL_NAME}@nobody"]
        return [*args, "--out", str(tmp_path / "out")], "error:", "nobody"
    if case == "export-missing-folder":
        args = ["export-model", "--model", str(tmp_path / "nowhere")]
        return [*args, "--out", str(tmp_path / "out")], "error:", "nowhere"
    raise AssertionError(case)


FAILURES = [
    "missing-config",
    "unknown-key",
    "not-a-mapping",
    "missing-data",
    "evaluate-missing-data",
    "evaluate-unknown-model",
    "evaluate-unknown-version",
    "export-unknown-alias",
    "export-missing-folder",
]


def _assert_one_message(out: str, err: str, prefix: str, text: str) -> None:
    assert "Traceback" not in out + err, err
    messages = [line for line in err.splitlines() if line.startswith(("error:", "invalid data:"))]
    assert len(messages) == 1, err
    assert messages[0].startswith(prefix), err
    assert text in err, err


@pytest.mark.parametrize("case", FAILURES)
def test_expected_failures_exit_2_with_one_message(
    in_store: CliStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    argv, prefix, text = _fail_args(in_store, tmp_path, case)
    monkeypatch.setattr(sys, "argv", ["xsell", *argv])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # typer replaces it; restore after
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    _assert_one_message(captured.out, captured.err, prefix, text)
    assert not (tmp_path / "out").exists()
    assert aliases_of(in_store.client()) == {CHAMPION: 1, CHALLENGER: 1}


def _storeless_fail_args(case: str, tmp_path: Path, shop: Path) -> tuple[list[str], str, str]:
    """Failures that need no trained store: ``(argv, message prefix, text it must contain)``."""
    if case == "completejourney-not-installed":
        return (
            ["data", "import", "completejourney", "--out", str(tmp_path / "cj")],
            "error:",
            ("completejourney"),
        )
    if case == "config-not-yaml":
        bad = tmp_path / "broken.yaml"
        bad.write_text("ranker: [max_rounds: 5\n  - {\n")
        return ["train", "--data", str(shop), "--config", str(bad)], "error:", "YAML"
    if case == "config-bad-value":
        bad = tmp_path / "neg.yaml"
        bad.write_text("ranker:\n  max_rounds: -5\n")
        return ["train", "--data", str(shop), "--config", str(bad)], "error:", "max_rounds"
    if case == "validate-missing-folder":
        return ["data", "validate", str(tmp_path / "no-shop")], "invalid data:", "no-shop"
    if case in ("validate-corrupt-file", "train-corrupt-file"):
        (shop / "purchases.parquet").write_bytes(b"not a parquet file" * 8)
        cmd = (
            ["data", "validate", str(shop)]
            if case.startswith("validate")
            else [
                "train",
                "--data",
                str(shop),
            ]
        )
        return cmd, "invalid data:", "purchases.parquet"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "completejourney-not-installed",
        "config-not-yaml",
        "config-bad-value",
        "validate-missing-folder",
        "validate-corrupt-file",
        "train-corrupt-file",
    ],
)
def test_expected_failures_without_a_store_are_one_line(
    tiny_shop_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    """Missing optional package, bad config, bad path, corrupt data: exit 2, one message."""
    from features.data import completejourney

    monkeypatch.setitem(sys.modules, completejourney.PACKAGE, None)  # not installed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    argv, prefix, text = _storeless_fail_args(case, tmp_path, tiny_shop_dir)
    monkeypatch.setattr(sys, "argv", ["xsell", *argv])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    _assert_one_message(captured.out, captured.err, prefix, text)
    assert not (tmp_path / "cj").exists() or not any((tmp_path / "cj").glob("*.parquet"))


def test_promote_of_an_unknown_version_is_one_error_line(
    in_store: CliStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["xsell", "promote", "99"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    try:
        with pytest.raises(SystemExit) as info:
            cli.main()
    finally:
        captured = capsys.readouterr()
    assert info.value.code == 2
    _assert_one_message(captured.out, captured.err, "error:", "99")
    assert aliases_of(in_store.client()) == {CHAMPION: 1, CHALLENGER: 1}


def test_the_console_script_reports_an_unknown_model_in_one_line(store: CliStore) -> None:
    """The installed ``xsell`` in a child process: exit code and stderr as a user sees them."""
    exe = Path(sys.executable).parent / "xsell"
    if not exe.exists():
        pytest.skip("xsell console script not installed")
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    proc = subprocess.run(
        [str(exe), "evaluate", "--data", str(store.shop_dir), "--model", "models:/nope/1"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    _assert_one_message(proc.stdout, proc.stderr, "error:", "models:/nope/1")

"""The ``xsell`` command line (``training/cli.py``): train, evaluate, promote and export-model
against a store of their own, and the expected failures (one message line, no traceback).

One module-scoped ``xsell train`` (through Typer's ``CliRunner``, in process) trains a
300-customer shop with a tiny YAML config into a temporary SQLite store named by
``MLFLOW_TRACKING_URI``; the other commands use that store. Nothing here moves an alias of the
shared trained model's store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
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

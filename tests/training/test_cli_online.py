"""The online loop's commands: `xsell store migrate`, `xsell store export`,
`xsell snapshot refresh` — results, and one `error:` line for an expected failure."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pandas as pd
from trained_model import Trained
from typer.testing import CliRunner

from features.data import schema as s
from features.data.io import load_shop
from features.recommend import XsellModel
from online.records import PURCHASE, LiveEvent
from online.store import EventStore
from training import cli

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli.app, list(args))
    return result.exit_code, result.output


def _one_error_line(output: str) -> bool:
    lines = [line for line in output.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in output


def test_store_migrate(tmp_path: Path) -> None:
    code, out = _run("store", "migrate", "--store", str(tmp_path / "none"))
    assert code == 2 and _one_error_line(out), out
    EventStore.open(tmp_path / "store").close()
    code, out = _run("store", "migrate", "--store", str(tmp_path / "store"))
    assert code == 0 and "already at schema version" in out, out


def test_store_export_appends_live_events(trained: Trained, tmp_path: Path) -> None:
    shop = trained.shop
    last = max(shop.purchases[s.TS].max(), shop.events[s.TS].max())
    customer = str(shop.customers[s.CUSTOMER_ID].iloc[0])
    product = str(shop.products[s.PRODUCT_ID].iloc[0])
    store = EventStore.open(tmp_path / "store")
    ts = (last + pd.Timedelta(hours=1)).to_pydatetime()
    store.add_events(
        [
            LiveEvent("a", PURCHASE, customer, product, ts, "order-live", 3.5, 2.0),
            LiveEvent("b", "view", customer, product, ts + timedelta(minutes=1)),
        ]
    )
    out_dir = tmp_path / "shop-plus-live"
    code, out = _run(
        "store",
        "export",
        "--store",
        str(tmp_path / "store"),
        "--data",
        str(trained.shop_dir),
        "--out",
        str(out_dir),
    )
    assert code == 0, out
    assert "+1 purchase lines" in out and "+1 events" in out
    grown = load_shop(out_dir)
    assert len(grown.purchases) == len(shop.purchases) + 1
    assert "order-live" in set(grown.purchases[s.ORDER_ID])


def test_snapshot_refresh_command(trained: Trained, model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    before = XsellModel.load(folder).snapshot.as_of_timestamp
    later = str((before + pd.Timedelta(days=2)).date())
    code, out = _run(
        "snapshot",
        "refresh",
        "--model-dir",
        str(folder),
        "--data",
        str(trained.shop_dir),
        "--until",
        later,
    )
    assert code == 0 and "refreshed" in out, out
    assert XsellModel.load(folder).snapshot.as_of_timestamp == pd.Timestamp(later)
    code, out = _run(
        "snapshot",
        "refresh",
        "--model-dir",
        str(tmp_path / "nothing"),
        "--data",
        str(trained.shop_dir),
    )
    assert code == 2 and _one_error_line(out), out

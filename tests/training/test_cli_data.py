"""``xsell data validate``: a report on good data, a clear message (no traceback) on bad data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.data import schema as s
from features.data.io import DataValidationError
from training import cli

Tables = dict[str, pd.DataFrame]


def _drop_unit_price(tables: Tables) -> str:
    tables[s.PURCHASES] = tables[s.PURCHASES].drop(columns=s.UNIT_PRICE)
    return s.PURCHASES


def _unknown_product(tables: Tables) -> str:
    tables[s.PURCHASES].loc[4, s.PRODUCT_ID] = "p404"
    return s.PURCHASES


def _negative_price(tables: Tables) -> str:
    tables[s.PRODUCTS].loc[2, s.PRICE] = -3.0
    return s.PRODUCTS


def _unparsable_ts(tables: Tables) -> str:
    ts = tables[s.PURCHASES][s.TS].astype(str)
    ts[6] = "not-a-date"
    tables[s.PURCHASES][s.TS] = ts
    return s.PURCHASES


# breakage id -> (edit the tables in place and return the edited table, expected column)
BREAKAGES: dict[str, tuple[Callable[[Tables], str], str]] = {
    "no-unit-price": (_drop_unit_price, s.UNIT_PRICE),
    "unknown-product": (_unknown_product, s.PRODUCT_ID),
    "negative-price": (_negative_price, s.PRICE),
    "bad-ts": (_unparsable_ts, s.TS),
}


@pytest.fixture(params=list(BREAKAGES))
def broken_shop(
    request: pytest.FixtureRequest,
    tiny_shop_dir: Path,
    tables: Tables,
    rewrite: Callable[..., Path],
) -> tuple[Path, str, str]:
    """A tiny shop with one contract violation: (folder, table, column)."""
    breakage, column = BREAKAGES[request.param]
    table = breakage(tables)
    rewrite(tiny_shop_dir, table, tables[table])
    return tiny_shop_dir, table, column


def xsell_executable() -> str:
    """The ``xsell`` console script of the running venv (falling back to PATH)."""
    candidate = Path(sys.executable).parent / "xsell"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("xsell")
    if found is None:
        pytest.skip("xsell console script not installed")
    return found


def assert_friendly(output: str, table: str, column: str) -> None:
    assert f"{table}.{column}" in output, output
    assert "Traceback" not in output, output


def test_validate_good_shop(tiny_shop_dir: Path) -> None:
    result = CliRunner().invoke(cli.app, ["data", "validate", str(tiny_shop_dir)])
    assert result.exit_code == 0, result.output
    assert "purchases" in result.output and "12 rows" in result.output
    assert "date range 2024-01-05 10:00:00 .. 2024-03-01 07:30:00" in result.output
    assert "ok: the shop satisfies the data contract" in result.output


def test_validate_broken_shop_cli_runner(broken_shop: tuple[Path, str, str]) -> None:
    """Through the Typer app the error propagates (``main`` turns it into a message)."""
    folder, table, column = broken_shop
    result = CliRunner().invoke(cli.app, ["data", "validate", str(folder)])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataValidationError)
    assert (result.exception.table, result.exception.column) == (table, column)
    assert "Traceback" not in result.output


def test_validate_broken_shop_main(
    broken_shop: tuple[Path, str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The console-script entry point: exit code 2 and a one-message error, no traceback."""
    folder, table, column = broken_shop
    monkeypatch.setattr(sys, "argv", ["xsell", "data", "validate", str(folder)])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # typer replaces it; restore after
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    out = capsys.readouterr()
    assert "invalid data:" in out.err
    assert_friendly(out.out + out.err, table, column)


def test_validate_subprocess(tiny_shop_dir: Path) -> None:
    """The installed console script, once on good data and once on bad data."""
    exe = xsell_executable()
    good = subprocess.run(
        [exe, "data", "validate", str(tiny_shop_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "date range" in good.stdout and "ok:" in good.stdout

    (tiny_shop_dir / "purchases.parquet").unlink()
    (tiny_shop_dir / "purchases.csv").write_text("order_id,customer_id,product_id,ts\n")
    bad = subprocess.run(
        [exe, "data", "validate", str(tiny_shop_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2
    assert_friendly(bad.stdout + bad.stderr, s.PURCHASES, s.UNIT_PRICE)

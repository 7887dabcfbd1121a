"""The ``xsell`` command line: parses arguments and dispatches, nothing more."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from features.io import DataValidationError

app = typer.Typer(
    help="Cross-sell and upsell ranking for shops.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate, import and validate shop data.", no_args_is_help=True)
import_app = typer.Typer(help="Import a public dataset into the data contract.")
app.add_typer(data_app, name="data")
data_app.add_typer(import_app, name="import")

Format = Annotated[str, typer.Option("--format", help="parquet or csv")]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Output folder")],
    customers: Annotated[int, typer.Option(help="Number of customers")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed: identical files)")] = 0,
    fmt: Format = "parquet",
) -> None:
    """Write the built-in synthetic shop (with its planted truth under OUT/truth)."""
    from features.synthetic import generate_shop

    if fmt not in ("parquet", "csv"):
        _fail(f"--format must be parquet or csv, not {fmt!r}")
    summary = generate_shop(out, n_customers=customers, seed=seed, fmt=fmt)  # type: ignore[arg-type]
    typer.echo(f"wrote synthetic shop to {out}: {summary}")


@data_app.command("validate")
def data_validate(folder: Annotated[Path, typer.Argument(help="Shop folder")]) -> None:
    """Load and validate a shop folder; print a short report."""
    from features.io import load_shop, shop_report

    shop = load_shop(folder)
    for line in shop_report(shop).lines():
        typer.echo(line)
    typer.secho("ok: the shop satisfies the data contract", fg=typer.colors.GREEN)


@import_app.command("completejourney")
def import_completejourney_cmd(
    out: Annotated[Path, typer.Option(help="Output folder")],
    fmt: Format = "parquet",
    max_households: Annotated[
        int | None, typer.Option(help="Keep only the first N households (quick runs)")
    ] = None,
) -> None:
    """Map the 84.51 Complete Journey dataset (pip extra 'completejourney') into the contract."""
    from features.completejourney import import_completejourney

    summary = import_completejourney(out, fmt=fmt, max_households=max_households)  # type: ignore[arg-type]
    typer.echo(f"wrote Complete Journey to {out}: {summary}")


def main() -> None:
    """Console-script entry point: friendly errors instead of tracebacks for bad data."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except DataValidationError as exc:
        typer.secho(f"invalid data: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)

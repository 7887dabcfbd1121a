"""The ``xsell`` command line: parses arguments and dispatches, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from features.data.io import DataValidationError

if TYPE_CHECKING:
    from training.train import TrainResult

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


@app.callback()
def _options(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show the libraries' logs, warnings and progress bars too"
        ),
    ] = False,
) -> None:
    """Cross-sell and upsell ranking for shops."""
    from training.output import configure_output

    configure_output(verbose)


def _fail(message: str, code: int = 2) -> NoReturn:
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
    from features.data.synthetic import generate_shop

    if fmt not in ("parquet", "csv"):
        _fail(f"--format must be parquet or csv, not {fmt!r}")
    summary = generate_shop(out, n_customers=customers, seed=seed, fmt=fmt)  # type: ignore[arg-type]
    typer.echo(f"wrote synthetic shop to {out}: {summary}")


@data_app.command("validate")
def data_validate(folder: Annotated[Path, typer.Argument(help="Shop folder")]) -> None:
    """Load and validate a shop folder; print a short report."""
    from features.data.io import load_shop, shop_report

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
    from features.data.completejourney import import_completejourney

    summary = import_completejourney(out, fmt=fmt, max_households=max_households)  # type: ignore[arg-type]
    typer.echo(f"wrote Complete Journey to {out}: {summary}")


def _one_line(exc: BaseException) -> str:
    """An exception as one line (multi-line messages, e.g. YAML's, are joined)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def main() -> None:
    """Console-script entry point: every expected failure is one line and exit code 2, never
    a traceback (bad data, bad config or path, missing optional package, unknown model)."""
    import yaml

    try:
        app()
    except DataValidationError as exc:
        typer.secho(f"invalid data: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except yaml.YAMLError as exc:
        typer.secho(f"error: bad YAML config: {_one_line(exc)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (ValueError, OSError, ImportError) as exc:  # config, paths, model URI, extras, ...
        typer.secho(f"error: {_one_line(exc)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.RED, err=True)
        sys.exit(130)
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException):
            raise
        typer.secho(f"error: {_one_line(exc)}", fg=typer.colors.RED, err=True)
        sys.exit(2)


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML training config")]


def _summary_table(result: TrainResult) -> None:
    """The end-of-training table: ranker vs best baseline per task and the served policy."""
    typer.echo("")
    typer.echo(
        f"{'task':<11} {'ranker ndcg@10':>14} {'best baseline':>30} {'ratio':>6} "
        f"{'cand. recall':>12}  served policy"
    )
    for task, ev in result.evaluations.items():
        model = ev.metrics["ndcg_at_10"]
        base = ev.metrics[f"baseline_{ev.best_baseline}.ndcg_at_10"]
        ratio = model / base if base > 0 else float("inf")
        label = f"{ev.best_baseline} {base:.4f}"
        typer.echo(
            f"{task:<11} {model:>14.4f} {label:>30} {ratio:>6.2f} "
            f"{ev.metrics['candidate_recall']:>12.3f}  {result.policies[task]}"
        )
    for task, policy in result.policies.items():
        if task not in result.evaluations:
            typer.echo(f"{task:<11} {'(no holdout queries)':>14}  served policy {policy}")
    verdict = "promoted to champion" if result.promoted else "not promoted"
    reason = result.reason.removeprefix("not promoted: ")
    typer.echo(f"\nregistered version {result.version} (alias challenger): {verdict}: {reason}")
    if result.version > 1:
        typer.echo(f"compare: xsell compare {result.version - 1} {result.version}")


@app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option(help="Shop folder")],
    train_until: Annotated[
        str | None,
        typer.Option(help="Last moment the run learns from (default: hold out the last test_days)"),
    ] = None,
    config: ConfigOpt = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name")] = None,
    engine: Annotated[
        str | None,
        typer.Option(help="local or dask (default: the config's engine, local)"),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address (tcp://host:8786); default a local cluster"),
    ] = None,
    dask_workers: Annotated[
        int | None, typer.Option(min=1, help="Workers of the local Dask cluster")
    ] = None,
) -> None:
    """Train one ranker per task, evaluate against baselines, register, promote if better."""
    import pandas as pd

    from training.config import TrainConfig
    from training.progress import Progress
    from training.train import train

    cfg = TrainConfig.from_yaml(config)
    if engine is not None and engine not in ("local", "dask"):
        raise ValueError(f"--engine: {engine!r} is not an engine (local or dask)")
    dask = {
        k: v for k, v in {"scheduler": scheduler, "workers": dask_workers}.items() if v is not None
    }
    if dask or engine:
        cfg = cfg.model_copy(
            update={
                "engine": engine or ("dask" if dask else cfg.engine),
                "dask": cfg.dask.model_copy(update=dask),
            }
        )
    result = train(
        data,
        config=cfg,
        train_until=pd.Timestamp(train_until) if train_until else None,
        experiment=experiment,
        progress=Progress(lambda msg: typer.echo(f"  .. {msg}"), bars=None),  # bars on a tty
    )
    _summary_table(result)
    typer.echo(f"run {result.run_id}")
    typer.echo("view:  xsell ui   (MLflow UI on http://127.0.0.1:5000)")
    typer.echo("serve: xsell serve   (POST http://127.0.0.1:3000/recommend)")


@app.command("evaluate")
def evaluate_cmd(
    data: Annotated[Path, typer.Option(help="Shop folder")],
    model: Annotated[
        str, typer.Option(help="Model URI or folder")
    ] = "models:/xsell-ranker@champion",
    start: Annotated[
        str | None, typer.Option(help="Holdout start (default: the model's data end)")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Holdout end (default: last purchase)")] = None,
) -> None:
    """Evaluate a model version against the baselines on a holdout window."""
    import pandas as pd

    from features.data.io import load_shop
    from training.evaluate import evaluate_model, holdout_sets
    from training.model import load_model
    from training.progress import Progress
    from training.tracking import use_store

    use_store()
    xm = load_model(model)
    shop = load_shop(data)
    lo = pd.Timestamp(start) if start else xm.snapshot.as_of_timestamp
    hi = pd.Timestamp(end) if end else shop.time_range()[1] + pd.Timedelta(seconds=1)
    report = Progress(typer.echo, bars=None)  # a bar with an ETA on a terminal
    with report.step("evaluating", 2 * len(xm.tasks), unit="steps") as step:
        sets = holdout_sets(
            xm, shop, start=lo, end=hi, seed=0, progress=lambda t: step.advance(note=t)
        )
        evals = evaluate_model(xm, sets, progress=lambda t: step.advance(note=t))
    for task, ev in evals.items():
        typer.echo(
            f"{task}: {int(ev.metrics['n_queries'])} queries, candidate recall "
            f"{ev.metrics['candidate_recall']:.3f}, served policy {xm.policy(task)}, "
            f"best baseline {ev.best_baseline}"
        )
        names = [
            *(["model"] if ev.has_ranker else []),
            *sorted(
                {
                    k.split(".")[0][len("baseline_") :]
                    for k in ev.metrics
                    if k.startswith("baseline_")
                }
            ),
        ]
        for name in names:
            prefix = "" if name == "model" else f"baseline_{name}."
            row = "  ".join(
                f"ndcg@{k}={ev.metrics[f'{prefix}ndcg_at_{k}']:.4f}" for k in (1, 3, 10)
            )
            typer.echo(f"  {name:<28} {row}  mrr={ev.metrics[f'{prefix}mrr']:.4f}")


@app.command("promote")
def promote_cmd(
    version: Annotated[int, typer.Argument(help="Registered version to make champion")],
    name: Annotated[str, typer.Option(help="Registered model name")] = "xsell-ranker",
) -> None:
    """Make VERSION the champion (manual override of the automatic gate)."""
    from training.tracking import Tracker

    tracker = Tracker(experiment=None)
    previous = tracker.promote(name, version)
    typer.echo(f"{name} version {version} is now champion (was {previous})")


@app.command("compare")
def compare_cmd(
    a: Annotated[int, typer.Argument(help="First registered version")],
    b: Annotated[int, typer.Argument(help="Second registered version")],
    name: Annotated[str, typer.Option(help="Registered model name")] = "xsell-ranker",
    ui: Annotated[str, typer.Option(help="MLflow UI address for the links")] = (
        "http://127.0.0.1:5000"
    ),
) -> None:
    """Two registered versions side by side: served policies, headline metrics, data range,
    description; and the MLflow UI links that compare them."""
    from training.compare import comparison_lines
    from training.tracking import Tracker

    tracker = Tracker(experiment=None)
    for line in comparison_lines(tracker, name, a, b, ui=ui):
        typer.echo(line)


@app.command("recommend")
def recommend_cmd(
    data: Annotated[Path, typer.Option(help="Shop folder (validated like for training)")],
    queries: Annotated[Path, typer.Option(help="Queries file (.parquet, .csv or .jsonl)")],
    out: Annotated[Path, typer.Option(help="Output file (.parquet or .csv)")],
    model: Annotated[
        str, typer.Option(help="Model URI or folder")
    ] = "models:/xsell-ranker@champion",
) -> None:
    """Batch scoring: query_id, task, rank, product_id, score for every query."""
    from features.data.io import load_shop
    from training.model import load_model
    from training.recommend import read_queries, write_recommendations
    from training.tracking import use_store

    load_shop(data)  # the same validation as training: fail early on a broken shop
    use_store()
    xm = load_model(model)
    frame = read_queries(queries)
    result = xm.recommend(frame)
    write_recommendations(result, out)
    typer.echo(
        f"wrote {len(result):,d} recommendations for {frame['query_id'].nunique():,d} queries to {out}"
    )


@app.command("ui")
def ui_cmd(port: Annotated[int, typer.Option(help="Port")] = 5000) -> None:
    """Open the MLflow UI on the local store (bound to 127.0.0.1)."""
    import os
    import subprocess

    from training.tracking import artifact_root, tracking_uri

    uri = tracking_uri()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        uri,
    ]
    root = artifact_root()
    if root is not None:
        cmd += ["--default-artifact-root", root.as_uri()]
    typer.echo(f"MLflow UI on http://127.0.0.1:{port} (store {uri}); Ctrl-C to stop")
    subprocess.run(cmd, env=env, check=False)


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic shop")] = Path("data/demo"),
    customers: Annotated[int, typer.Option(help="Customers in the synthetic shop")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed")] = 7,
) -> None:
    """The main job on the built-in synthetic shop: generate, validate, train, evaluate, register."""
    from features.data.io import load_shop, shop_report
    from features.data.synthetic import generate_shop

    typer.echo(f"1/3 generating a synthetic shop with {customers:,d} customers in {out}")
    generate_shop(out, n_customers=customers, seed=seed)
    typer.echo("2/3 validating")
    for line in shop_report(load_shop(out)).lines():
        typer.echo(f"  {line}")
    typer.echo("3/3 training, evaluating, registering, promoting")
    train_cmd(data=out, train_until=None, config=None, experiment="xsell-demo")


@app.command("serve")
def serve_cmd(
    port: Annotated[int, typer.Option(help="Port")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    model: Annotated[
        str | None,
        typer.Option(help="Model URI or folder [default: $XSELL_MODEL_URI or the champion]"),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (one model each)")] = 1,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log one line per request (BentoML access log)")
    ] = False,
    store: Annotated[
        str | None,
        typer.Option(
            help="Event store: a folder (SQLite, created) or a SQLAlchemy URL "
            "[default: $XSELL_STORE or ./xsell-store]"
        ),
    ] = None,
    experiment: Annotated[
        Path | None, typer.Option(help="Experiment file: the traffic split between variants")
    ] = None,
) -> None:
    """Start the prediction API (BentoML); Ctrl-C to stop."""
    import subprocess

    typer.echo(
        f"xsell API on http://{host}:{port} "
        "(POST /recommend, /rank, /events, /feedback; GET /model, /readyz, /preview)"
    )
    cmd = [sys.executable, "-m", "serving", "--host", host, "--port", str(port)]
    cmd += ["--workers", str(workers), *(["--model", model] if model else [])]
    cmd += ["--access-log"] if access_log else []
    cmd += ["--store", store] if store else []
    cmd += ["--experiment", str(experiment)] if experiment else []
    try:
        code = subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:
        code = 0
    if code:
        raise typer.Exit(code)


snapshot_app = typer.Typer(help="The feature snapshot a model folder serves.")
app.add_typer(snapshot_app, name="snapshot")


@snapshot_app.command("refresh")
def snapshot_refresh_cmd(
    model_dir: Annotated[Path, typer.Option(help="Model folder (what xsell serve --model serves)")],
    data: Annotated[Path, typer.Option(help="Shop folder with the newer data")],
    until: Annotated[
        str | None, typer.Option(help="New cut-off [default: just after the data's last row]")
    ] = None,
) -> None:
    """Rebuild the snapshot from newer data for the same rankers (no retraining); a running
    service on MODEL_DIR picks it up within seconds, without a restart."""
    import pandas as pd

    from features.recommend import ModelLoadError
    from training.model import refresh_model_snapshot

    try:
        cutoff = pd.Timestamp(until) if until else None
        snapshot = refresh_model_snapshot(model_dir, data, until=cutoff)
    except (ModelLoadError, DataValidationError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(
        f"refreshed {model_dir}: snapshot as of {snapshot.as_of_timestamp} "
        f"({snapshot.n_customers} customers, {snapshot.n_products} products)"
    )


store_app = typer.Typer(help="The live event store of xsell serve.", no_args_is_help=True)
app.add_typer(store_app, name="store")
StoreOption = Annotated[
    str, typer.Option("--store", help="Event store: a folder (SQLite) or a SQLAlchemy URL")
]


@store_app.command("migrate")
def store_migrate_cmd(store: StoreOption = "xsell-store") -> None:
    """Bring an existing event store to this code's schema version (explicit, logged)."""
    from online.store import StoreError, migrate_store

    try:
        before, after = migrate_store(store)
    except StoreError as exc:
        _fail(str(exc))
    typer.echo(
        f"store {store}: schema version {before} -> {after}"
        if before != after
        else f"store {store}: already at schema version {after}"
    )


@store_app.command("export")
def store_export_cmd(
    data: Annotated[Path, typer.Option(help="The shop folder the live events extend")],
    out: Annotated[Path, typer.Option(help="New shop folder: the shop plus the live events")],
    store: StoreOption = "xsell-store",
    fmt: Format = "parquet",
) -> None:
    """Write the shop plus the stored live purchases, views and carts (and feedback clicks and
    adds) in the data contract, for the next `xsell train` or `xsell snapshot refresh`."""
    from online.export import export_to_contract
    from online.store import EventStore, StoreError

    if fmt not in ("parquet", "csv"):
        _fail(f"--format must be parquet or csv, not {fmt!r}")
    try:
        opened = EventStore.open(store, create=False)
        summary = export_to_contract(opened, data, out, fmt=fmt)  # type: ignore[arg-type]
    except (StoreError, DataValidationError, OSError) as exc:
        _fail(str(exc))
    typer.echo(
        f"wrote {summary.out}: +{summary.purchases_added} purchase lines, "
        f"+{summary.events_added + summary.feedback_events_added} events, "
        f"{summary.impressions} impressions under feedback/; "
        f"{summary.skipped_before_cutoff} older than the shop's data skipped"
        + (f"; dropped {summary.dropped}" if summary.dropped else "")
    )


@app.command("export-model")
def export_model_cmd(
    out: Annotated[Path, typer.Option(help="Folder to write")] = Path("bento_model"),
    model: Annotated[
        str, typer.Option(help="Model URI or folder")
    ] = "models:/xsell-ranker@champion",
) -> None:
    """Write a model version as a folder (what `bentoml build` packages with the service)."""
    from training.model import export_model

    folder, version = export_model(model, out)
    typer.echo(f"wrote model {version} to {folder}")


# --------------------------------------------------------------------------- experiment report

experiment_app = typer.Typer(
    help="Online A/B experiments on the live event store.", no_args_is_help=True
)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("report")
def experiment_report_cmd(
    store: Annotated[
        str, typer.Option("--store", help="Event store: a folder holding events.db, or a URL")
    ],
    control: Annotated[
        str | None,
        typer.Option(help="Control variant [default: champion, else the most impressed one]"),
    ] = None,
    window_hours: Annotated[
        float, typer.Option(help="Attribution window after a recommendation, in hours")
    ] = 24.0,
    log_mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Log the report as an MLflow run")
    ] = True,
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment of the report run")
    ] = "xsell-experiments",
) -> None:
    """A/B report per variant and task, with 95% intervals and tests against the control.

    CTR, conversion, revenue per impression, attach and upgrade rates and AOV from the event
    store; printed, and logged as an MLflow run unless --no-mlflow.
    """
    from datetime import timedelta

    from online.report import experiment_report, render, verdict_line
    from online.store import EventStore, StoreError

    if not window_hours > 0:
        _fail(f"--window-hours must be positive, got {window_hours:g}")
    try:
        events = EventStore.open(store, create=False)
        try:
            tables = events.tables()
        finally:
            events.close()
        report = experiment_report(tables, control=control, window=timedelta(hours=window_hours))
    except (StoreError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(render(report))
    typer.echo("")
    typer.echo(verdict_line(report))
    if log_mlflow:
        from training.experiment import log_report

        run_id = log_report(report, experiment_name=experiment)
        typer.echo(f"run {run_id} (MLflow experiment {experiment}; view: xsell ui)")
    else:
        typer.echo("not logged to MLflow (--no-mlflow)")


# --------------------------------------------------------------------------- simulator


@app.command("simulate")
def simulate_cmd(
    url: Annotated[str, typer.Option(help="Base URL of a running xsell serve")],
    data: Annotated[Path, typer.Option(help="The synthetic shop the served model learnt from")],
    visits: Annotated[int, typer.Option(min=1, help="Number of simulated visits")],
    seed: Annotated[int, typer.Option(help="Seed (same seed, same answers: same visits)")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Visits in flight at once")] = 1,
) -> None:
    """Closed loop on the synthetic shop: simulated customers call the API, respond to what
    they are shown by the shop's planted behaviour and post impressions, clicks and orders
    (then: xsell experiment report --store ...)."""
    from online.simulate import SimulationError, simulate

    try:
        summary = simulate(
            url,
            data,
            visits=visits,
            seed=seed,
            concurrency=concurrency,
            progress=True,
            echo=typer.echo,
        )
    except (SimulationError, DataValidationError) as exc:
        _fail(str(exc))
    for line in summary.lines():
        typer.echo(line)
    if summary.errors:
        _fail(f"{summary.errors} request(s) failed (first: {summary.first_errors[0]})", code=1)

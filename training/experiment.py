"""An A/B experiment report (:mod:`online.report`) logged as one MLflow run.

The run holds:

* params: ``control``, ``window_hours``, ``variants`` (``name=model version`` pairs) and
  ``variant.<name>.model_version`` for each variant;
* metrics ``<task>.<metric>.<variant>`` (``cross_sell.ctr.champion``, ``any.aov.challenger``),
  with ``<task>.<metric>.<stat>.<variant>`` for ``ci_low``, ``ci_high``, ``n``, and, for the
  challengers, ``diff``, ``lift`` and ``p_value``; empty cells (NaN) are skipped;
* tags linking each variant to the model it served: ``variant.<name>.model_version`` and, for a
  registry label such as ``xsell-ranker/4``, ``variant.<name>.registered_model`` and
  ``variant.<name>.registered_version``; ``verdict`` (on revenue per impression, any task);
* artifacts ``experiment/report.csv`` (the table), ``experiment/report.png`` (the figure),
  ``experiment/report.txt`` (the printed table) and ``experiment/summary.json`` (control,
  window, model versions, warnings and the verdicts).

All MLflow access goes through :class:`training.tracking.Tracker`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from online.report import (
    ANY_TASK,
    CI_HIGH,
    CI_LOW,
    DIFF,
    LIFT,
    METRIC,
    METRICS,
    P_VALUE,
    TASK,
    VALUE,
    VARIANT,
    ExperimentReport,
    N,
    render,
    report_figure,
    verdict_line,
)
from training.tracking import DEFAULT_MODEL_NAME, Tracker

EXPERIMENT_NAME = "xsell-experiments"
TABLE_ARTIFACT = "experiment/report.csv"
FIGURE_ARTIFACT = "experiment/report.png"
TEXT_ARTIFACT = "experiment/report.txt"
SUMMARY_ARTIFACT = "experiment/summary.json"
VERDICT_METRIC = "revenue_per_impression"

# Table column -> the statistic's name inside a metric name (the value itself has none).
_STATS: tuple[tuple[str, str], ...] = (
    (CI_LOW, "ci_low"),
    (CI_HIGH, "ci_high"),
    (N, "n"),
    (DIFF, "diff"),
    (LIFT, "lift"),
    (P_VALUE, "p_value"),
)
_REGISTRY_LABEL = re.compile(r"^(?P<name>[^/]+)/(?P<version>\d+)$")
_UNSAFE = re.compile(r"[^\w.\- :]")


def _safe(part: str) -> str:
    """A name part MLflow accepts in a metric or tag key (other characters become ``_``)."""
    return _UNSAFE.sub("_", part)


def report_metric_name(task: str, metric: str, variant: str, stat: str | None = None) -> str:
    """``cross_sell.ctr.champion``, or with ``stat``: ``cross_sell.ctr.p_value.challenger``."""
    parts = [task, metric, *([stat] if stat else []), variant]
    return ".".join(_safe(p) for p in parts)


def report_metrics(report: ExperimentReport) -> dict[str, float]:
    """Every finite cell of the report's table as an MLflow metric (see the module docstring)."""
    out: dict[str, float] = {}
    for row in report.table.to_dict("records"):
        task, metric, variant = str(row[TASK]), str(row[METRIC]), str(row[VARIANT])
        cells = [(None, row[VALUE]), *((stat, row[column]) for column, stat in _STATS)]
        for stat, value in cells:
            if value is not None and math.isfinite(float(value)):
                out[report_metric_name(task, metric, variant, stat)] = float(value)
    return out


def _versions(report: ExperimentReport, variant: str) -> str:
    return ",".join(report.model_versions.get(variant, ())) or "unknown"


def report_params(report: ExperimentReport) -> dict[str, Any]:
    """The run's params: control, window and each variant's model version(s)."""
    return {
        "control": report.control,
        "window_hours": report.window.total_seconds() / 3600,
        "variants": ",".join(f"{v}={_versions(report, v)}" for v in report.variants),
        **{f"variant.{_safe(v)}.model_version": _versions(report, v) for v in report.variants},
    }


def report_tags(report: ExperimentReport) -> dict[str, str]:
    """Tags linking each variant to the model version it served, and the headline verdict.

    A version label ``<registered model>/<version>`` (how :mod:`training.model` names a
    registry version, e.g. ``xsell-ranker/4``) adds ``variant.<name>.registered_model`` and
    ``variant.<name>.registered_version``; other labels (``run:<id>``) are kept as they are.
    """
    tags = {
        "report": "experiment",
        "control": report.control,
        "verdict": report.verdict(VERDICT_METRIC, ANY_TASK) or "none",
        "warnings": str(len(report.warnings)),
    }
    for variant in report.variants:
        key = f"variant.{_safe(variant)}"
        tags[f"{key}.model_version"] = _versions(report, variant)
        versions = report.model_versions.get(variant, ())
        if len(versions) == 1 and (match := _REGISTRY_LABEL.match(versions[0])):
            tags[f"{key}.registered_model"] = match["name"]
            tags[f"{key}.registered_version"] = match["version"]
    if any(k.endswith(".registered_model") and v == DEFAULT_MODEL_NAME for k, v in tags.items()):
        tags["registered_model"] = DEFAULT_MODEL_NAME
    return tags


def report_summary(report: ExperimentReport, alpha: float = 0.05) -> dict[str, Any]:
    """Control, window, model versions, warnings and each metric's verdict per task."""
    verdicts: dict[str, dict[str, str | None]] = {}
    for metric in METRICS:
        rows = report.table[report.table[METRIC].eq(metric.name)]
        verdicts[metric.name] = {
            str(task): report.verdict(metric.name, str(task), alpha)
            for task in dict.fromkeys(rows[TASK])
        }
    return {
        "control": report.control,
        "variants": list(report.variants),
        "window_hours": report.window.total_seconds() / 3600,
        "model_versions": {v: list(vs) for v, vs in report.model_versions.items()},
        "mixed_customers": report.mixed_customers,
        "warnings": list(report.warnings),
        "alpha": alpha,
        "verdicts": verdicts,
    }


def log_report(
    report: ExperimentReport,
    *,
    experiment_name: str = EXPERIMENT_NAME,
    run_name: str | None = None,
    root: Path | None = None,
) -> str:
    """Log ``report`` as one MLflow run (params, metrics, tags, table, figure).

    Args:
        report: The report (:func:`online.report.experiment_report`).
        experiment_name: MLflow experiment (created if missing).
        run_name: Default: ``ab-report <control> vs <challengers>``.
        root: Folder of a local MLflow store; default as :class:`Tracker` (``MLFLOW_TRACKING_URI``
            or the repository's ``mlruns/``).

    Returns:
        The run id.
    """
    import mlflow

    challengers = ",".join(report.variants[1:]) or "nothing"
    name = run_name or f"ab-report {report.control} vs {challengers}"
    tracker = Tracker(experiment=experiment_name, root=root)
    with tracker.start_run(name, tags=report_tags(report)) as run:
        tracker.log_params(report_params(report))
        tracker.log_metrics(report_metrics(report))
        tracker.log_table_csv(report.table, TABLE_ARTIFACT)
        tracker.log_dict(report_summary(report), SUMMARY_ARTIFACT)
        mlflow.log_text(f"{render(report)}\n\n{verdict_line(report)}\n", TEXT_ARTIFACT)
        tracker.log_figure(report_figure(report), FIGURE_ARTIFACT)
        return str(run.info.run_id)

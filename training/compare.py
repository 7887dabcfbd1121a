"""``xsell compare A B``: two registered versions side by side, and the MLflow links to compare
them in the UI.

Everything comes from the registry and the versions' runs: the served policy per task (version
tags ``policy.<task>``), the headline metrics (run metrics, see
:func:`training.evaluate.headline_metrics`), the data range (version tag, else run tag), the
promotion decision and the description's first line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from features.tasks import task_names
from training.evaluate import HEADLINE_METRICS
from training.tracking import DEFAULT_UI_URL, Tracker, compare_runs_url, compare_versions_url

MISSING = "-"


@dataclass(frozen=True)
class VersionFacts:
    """What the comparison shows of one registered version."""

    version: int
    run_id: str
    experiment_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    run_tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    description: str = ""

    def tag(self, key: str) -> str:
        """A version tag, else the run's tag of that name, else ``-``."""
        return self.tags.get(key) or self.run_tags.get(key) or MISSING

    def policy(self, task: str) -> str:
        return self.tags.get(f"policy.{task}") or self.run_tags.get(f"policy.{task}") or MISSING

    def tasks(self) -> set[str]:
        from_tags = {
            k.split(".", 1)[1] for k in {**self.run_tags, **self.tags} if k.startswith("policy.")
        }
        return from_tags | {k.split(".", 1)[0] for k in self.metrics if "." in k}


def version_facts(tracker: Tracker, name: str, version: int) -> VersionFacts:
    """Read one version and its run.

    Raises:
        ValueError: No such version, or the version has no run in this store.
    """
    mv = tracker.get_version(name, version)
    if not mv.run_id:
        raise ValueError(f"{name} version {version} has no run to compare")
    run = tracker.client.get_run(mv.run_id)
    return VersionFacts(
        version=int(mv.version),
        run_id=mv.run_id,
        experiment_id=run.info.experiment_id,
        aliases=tuple(sorted(getattr(mv, "aliases", []) or [])),
        tags=dict(mv.tags or {}),
        run_tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        description=mv.description or "",
    )


CELL_WIDTH = 44


def _cell(text: str) -> str:
    """``text`` cut to :data:`CELL_WIDTH` characters (two versions side by side stay readable)."""
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def _fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    diff = b - a
    return f"{diff:+.4f}" if abs(diff) >= 5e-5 else "="


def comparison_lines(
    tracker: Tracker, name: str, a: int, b: int, *, ui: str = DEFAULT_UI_URL
) -> list[str]:
    """The lines ``xsell compare`` prints: a table of ``a`` and ``b`` and the two UI links."""
    left, right = version_facts(tracker, name, a), version_facts(tracker, name, b)
    rows: list[tuple[str, str, str, str]] = [
        ("run", left.run_id, right.run_id, ""),
        ("aliases", ", ".join(left.aliases) or MISSING, ", ".join(right.aliases) or MISSING, ""),
        ("data range", left.tag("data_range"), right.tag("data_range"), ""),
        ("trained until", left.tag("train_until"), right.tag("train_until"), ""),
        ("promotion", left.tag("promotion"), right.tag("promotion"), ""),
        (
            "description",
            (left.description.splitlines() or [MISSING])[0],
            (right.description.splitlines() or [MISSING])[0],
            "",
        ),
    ]
    known = task_names()
    tasks = left.tasks() | right.tasks()
    ordered = [t for t in known if t in tasks] + sorted(tasks - set(known) - {"champion"})
    for task in ordered:
        rows.append((task, "", "", ""))
        pa, pb = left.policy(task), right.policy(task)
        rows.append(("  served policy", pa, pb, "" if pa == pb else "changed"))
        for metric in HEADLINE_METRICS:
            if metric == "served_is_ranker":  # shown as the served policy
                continue
            key = f"{task}.{metric}"
            va, vb = left.metrics.get(key), right.metrics.get(key)
            rows.append((f"  {metric}", _fmt(va), _fmt(vb), _delta(va, vb)))
    head = ("", f"{name} v{left.version}", f"{name} v{right.version}", "change")
    rows = [(r[0], _cell(r[1]), _cell(r[2]), r[3]) for r in rows]
    w0 = max(len(r[0]) for r in (head, *rows))
    w1 = max(len(r[1]) for r in (head, *rows))
    w2 = max(len(r[2]) for r in (head, *rows))
    lines = [f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:<{w2}}  {r[3]}".rstrip() for r in (head, *rows)]
    lines += [
        "",
        "compare the runs in MLflow (xsell ui):",
        "  "
        + compare_runs_url(
            [left.run_id, right.run_id], [left.experiment_id, right.experiment_id], ui
        ),
        "compare the versions:",
        "  "
        + compare_versions_url(name, {left.version: left.run_id, right.version: right.run_id}, ui),
    ]
    return lines

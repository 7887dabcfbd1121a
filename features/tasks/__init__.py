"""Tasks, each declared once: queries and labels, eligibility, guardrails, baselines, placements.

A :class:`Task` is everything that differs between cross-sell, upsell and replenish. Training,
evaluation, serving and the docs iterate over :func:`all_tasks`; candidate sources name their
tasks in :mod:`features.sources`. To add a task: write a module here that builds its
:class:`Task` and calls :func:`register_task`, and import it at the bottom of this file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.columns import source_columns
from features.config import FeatureConfig
from features.data.io import Shop
from features.queries import LabelledQueries
from features.registry import Registry
from features.rules import Rule
from features.sources import source_names

QueryBuilder = Callable[..., LabelledQueries]


@dataclass(frozen=True)
class Baseline:
    """A simple heuristic: rank candidates by one feature column (higher first).

    Attributes:
        name: Baseline name (``baseline_<name>.<metric>`` in MLflow, ``baseline:<name>`` as a
            served policy).
        column: Feature column; ``{long}`` is replaced by the longest popularity window.
        tie_break: A second column (higher first) that orders ties of the first.
        description: What a shop would call it.
        ascending: Lower values first (a source's rank).
    """

    name: str
    column: str
    tie_break: str | None = None
    description: str = ""
    ascending: bool = False

    def columns(self, config: FeatureConfig) -> tuple[str, str | None]:
        """The concrete column names for ``config``."""
        long = max(config.popularity_windows_days)
        tie = None if self.tie_break is None else self.tie_break.format(long=long)
        return self.column.format(long=long), tie

    def score(self, X: np.ndarray, columns: list[str], config: FeatureConfig) -> np.ndarray:
        """The baseline's score per row of a feature matrix (higher first; -inf for missing).

        The same function ranks the holdout in evaluation and serves a task whose served policy
        is this baseline.
        """
        col, tie = self.columns(config)
        v = X[:, columns.index(col)].astype(np.float64)
        v = -v if self.ascending else v
        v = np.where(np.isnan(v), -np.inf, v)
        if tie is None or len(v) == 0:
            return v
        t = X[:, columns.index(tie)].astype(np.float64)
        t = np.where(np.isnan(t), -np.inf, t)
        finite = np.unique(v[np.isfinite(v)])
        gap = float(np.min(np.diff(finite))) if len(finite) > 1 else 1.0
        order = np.argsort(t, kind="stable")
        tie_rank = np.empty(len(t))
        tie_rank[order] = (np.arange(len(t)) + 1) / (len(t) + 1)
        return v + 0.5 * gap * tie_rank


def source_baseline(source: str) -> Baseline:
    """A source alone as a baseline: its own ranking (``source_<name>``)."""
    return Baseline(
        f"source_{source}",
        source_columns(source)[1],
        description=f"the {source} source alone",
        ascending=True,
    )


MERGED = Baseline(
    "merged",
    "merge_priority",
    description="the candidate merge alone (every source, weighted by the learned merge)",
)


@dataclass(frozen=True)
class Task:
    """One recommendation task.

    Attributes:
        name: Task name (``cross_sell``, ``upsell``, ``replenish``): the output's ``task``.
        description: One line for people.
        queries: ``queries(shop, *, start, end, config) -> LabelledQueries`` (training and
            evaluation queries with their positives).
        eligibility: Rules every candidate passes (applied before truncation).
        guardrails: Rules every recommended item passes (applied after ranking).
        diverse: Whether the category diversity cap (``max_per_category``) applies: lists of
            different products yes; an upsell list of one family's versions no.
        placements: Placement -> default number of items (placements not listed never ask
            for this task).
        baselines: The task's simple heuristics (each source alone is one too).
        needs_anchor: Queries without an anchor product are skipped.
        popular_fallback: An empty list is filled with segment popularity (cold start).
    """

    name: str
    description: str
    queries: QueryBuilder
    eligibility: tuple[Rule, ...]
    guardrails: tuple[Rule, ...]
    diverse: bool
    placements: Mapping[str, int]
    baselines: tuple[Baseline, ...]
    needs_anchor: bool = False
    popular_fallback: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the task's candidate sources (declared in :mod:`features.sources`)."""
        return source_names(self.name)

    def all_baselines(self) -> tuple[Baseline, ...]:
        """The declared baselines, the candidate merge alone, then each source alone."""
        return (*self.baselines, MERGED, *(source_baseline(src) for src in self.sources))

    def baseline(self, name: str) -> Baseline:
        """The baseline called ``name``.

        Raises:
            ValueError: The task has no such baseline.
        """
        for b in self.all_baselines():
            if b.name == name:
                return b
        raise ValueError(f"{self.name} has no baseline {name!r}")

    def training_queries(
        self, shop: Shop, *, start: pd.Timestamp, end: pd.Timestamp, config: FeatureConfig
    ) -> LabelledQueries:
        """Labelled queries with ``as_of`` in ``[start, end)``."""
        return self.queries(shop, start=start, end=end, config=config)


TASKS: Registry[Task] = Registry("task")
register_task = TASKS.register
get_task = TASKS.get_named


def all_tasks() -> tuple[Task, ...]:
    """Every registered task, in registration order."""
    return tuple(TASKS.values())


def task_names() -> tuple[str, ...]:
    """Names of every registered task."""
    return tuple(TASKS)


def tasks_at(placement: str) -> tuple[Task, ...]:
    """The tasks a placement asks for (those whose ``placements`` list it)."""
    return tuple(t for t in TASKS.values() if placement in t.placements)


# Registration, in the order tasks appear in outputs and docs.
# isort: off
from features.tasks import cross_sell  # noqa: E402, F401
from features.tasks import upsell  # noqa: E402, F401
from features.tasks import replenish  # noqa: E402, F401
# isort: on

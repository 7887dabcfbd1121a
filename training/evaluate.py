"""Evaluation of a model, its served policy and the baselines on the same holdout queries.

Every task is compared with each of its baselines (declared with the task, plus each candidate
source alone) on the same holdout queries and candidates. :func:`choose_policy` is the
"never worse than the heuristics" rule: a task is served by its ranker only if the ranker beats
the best baseline by ``margin``; otherwise by that baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.arrays import rank_within
from features.batch import QUERY_ID
from features.data.io import Shop
from features.pipeline import Step, TaskSet, build_steps, join_steps
from features.recommend import BASELINE_PREFIX, RANKER, XsellModel
from features.snapshot import FeatureSnapshot
from features.tasks import get_task
from training import metrics as m

KS = (1, 3, 5, 10)
ITEM_KINDS = ("new_items", "rebuy_items")


@dataclass(frozen=True)
class TaskEvaluation:
    """Metrics of one task on a holdout.

    Attributes:
        metrics: Flat ``{name: value}``: the ranker's (``ndcg_at_10``, ...), each baseline's
            (``baseline_<name>.ndcg_at_10``), slices by item kind
            (``new_items.ndcg_at_10``, ``rebuy_items.baseline_<best>.ndcg_at_10``), candidate
            recall and business proxies.
        per_segment: Ranker metrics sliced by customer type and persona segment.
        candidate_recall: Source -> share of positives reached.
        best_baseline: Name of the baseline with the highest primary metric.
        has_ranker: Whether the ranker was scored (False: the task has no ranker).
        source_contribution: Per source: its share of the ranker's top-10 items (by the source
            that ranked each item best), and of the hits among them.
    """

    metrics: dict[str, float]
    per_segment: pd.DataFrame
    candidate_recall: dict[str, float]
    best_baseline: str
    has_ranker: bool = True
    source_contribution: pd.DataFrame = field(default_factory=pd.DataFrame)

    def value(self, policy: str, key: str) -> float:
        """Metric ``key`` of a served policy (``ranker`` or ``baseline:<name>``)."""
        if policy == RANKER:
            return self.metrics.get(key, float("nan")) if self.has_ranker else float("nan")
        name = policy.removeprefix(BASELINE_PREFIX)
        return self.metrics.get(f"baseline_{name}.{key}", float("nan"))


def choose_policy(ev: TaskEvaluation, *, primary: str, margin: float) -> str:
    """``ranker`` if it beats the best baseline's ``primary`` by the relative ``margin``, else
    ``baseline:<best>`` (also when the task has no ranker)."""
    baseline = f"{BASELINE_PREFIX}{ev.best_baseline}"
    model, base = ev.value(RANKER, primary), ev.value(baseline, primary)
    if not np.isfinite(model):
        return baseline
    if not np.isfinite(base) or model > base * (1 + margin) + 1e-12:
        return RANKER
    return baseline


def ranking_metrics(
    ts: TaskSet,
    score: np.ndarray,
    *,
    label: np.ndarray | None = None,
    n_pos: np.ndarray | None = None,
    q: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per-query metrics of ``score`` on a task set (missed positives count as misses).

    Args:
        ts: The task set.
        score: Score per row.
        label: Labels to score (default the task set's), e.g. only re-bought positives.
        n_pos: Positives per query of ``ts.queries`` matching ``label`` (default all).
        q: :func:`query_positions` of ``ts`` when the caller already has them.
    """
    q = query_positions(ts) if q is None else q
    labels = ts.label if label is None else label
    positives = ts.queries["n_positives"].to_numpy() if n_pos is None else n_pos
    return m.per_query_metrics(q, score, labels.astype(np.int64), positives, ks=KS)


def query_positions(ts: TaskSet) -> np.ndarray:
    """Per row of ``ts``, the position of its query in ``ts.queries``."""
    return pd.Index(ts.queries[QUERY_ID]).get_indexer(ts.query_id)


def _item_kind_views(ts: TaskSet) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Labels and positives per query restricted to new items and to re-bought items."""
    n_all = ts.queries["n_positives"].to_numpy()
    n_rebuy = ts.queries["n_positives_rebuy"].to_numpy()
    rebuy = ts.rebuy.astype(bool)
    return {
        "new_items": ((ts.label > 0) & ~rebuy, n_all - n_rebuy),
        "rebuy_items": ((ts.label > 0) & rebuy, n_rebuy),
    }


def evaluate_task(
    ts: TaskSet,
    score: np.ndarray | None,
    snapshot: FeatureSnapshot,
    *,
    primary: str = "ndcg_at_10",
) -> TaskEvaluation:
    """Ranker and baseline metrics, slices by item kind and segment, candidate recall.

    Args:
        ts: Holdout task set.
        score: Ranker score per row (None: the task has no ranker; its metrics are NaN).
        snapshot: The snapshot of the holdout features.
        primary: The metric that picks the best baseline.
    """
    task = get_task(ts.task)
    cfg = snapshot.config
    has_ranker = score is not None
    ranker_score = np.zeros(len(ts)) if score is None else score
    q = query_positions(ts)
    per_q = ranking_metrics(ts, ranker_score, q=q)
    out = {k: (float(v) if has_ranker else float("nan")) for k, v in m.summarize(per_q).items()}
    pidx = np.fromiter(
        (snapshot.product_index.get(p, -1) for p in ts.product_id), dtype=np.int64, count=len(ts)
    )
    price = np.where(pidx >= 0, snapshot.products.price[np.maximum(pidx, 0)], np.nan)
    if has_ranker:
        for k in (3, 10):
            out[f"catalog_coverage_at_{k}"] = m.catalog_coverage(
                q, ranker_score, ts.product_id, k, snapshot.n_products
            )
            out[f"expected_revenue_at_{k}"] = m.expected_revenue_at_k(
                q, ranker_score, ts.label, price, k, n_queries=len(ts.queries)
            )
        top = rank_within(q, ranker_score.astype(np.float64)) <= 3
        out["guardrail_share_at_3"] = float(np.mean(ts.allowed[top])) if top.any() else np.nan
    n_pos = ts.queries["n_positives"].to_numpy()
    out["candidate_recall"] = m.candidate_recall(ts.queries["n_found"].to_numpy(), n_pos)
    out["n_queries"] = float(len(ts.queries))
    best_name, best_value = "", -np.inf
    baseline_scores: dict[str, np.ndarray] = {}
    for baseline in task.all_baselines():
        bscore = baseline.score(ts.X, ts.columns, cfg)
        if len(bscore) and not np.isfinite(bscore).any():
            continue  # a source that proposes nothing here (no events): not a heuristic
        baseline_scores[baseline.name] = bscore
        bq = m.summarize(ranking_metrics(ts, bscore, q=q))
        for key, value in bq.items():
            out[f"baseline_{baseline.name}.{key}"] = float(value)
        if bq[primary] > best_value:
            best_name, best_value = baseline.name, bq[primary]
    views = _item_kind_views(ts)
    n_rebuy = ts.queries["n_positives_rebuy"].to_numpy()
    n_found_rebuy = ts.queries["n_found_rebuy"].to_numpy()
    out["rebuy_share_of_positives"] = float(n_rebuy.sum() / max(n_pos.sum(), 1))
    for kind, (label, kind_pos) in views.items():
        out[f"{kind}.n_queries"] = float(np.sum(kind_pos > 0))
        found = (
            n_found_rebuy
            if kind == "rebuy_items"
            else ts.queries["n_found"].to_numpy() - n_found_rebuy
        )
        out[f"{kind}.candidate_recall"] = m.candidate_recall(found, kind_pos)
        if not (kind_pos > 0).any():
            continue
        for name, sc in (
            ("", ranker_score),
            (f"baseline_{best_name}.", baseline_scores[best_name]),
        ):
            if not name and not has_ranker:
                continue
            summary = m.summarize(ranking_metrics(ts, sc, label=label, n_pos=kind_pos, q=q))
            for key in (primary, "hit_rate_at_10", "recall_at_10"):
                out[f"{kind}.{name}{key}"] = float(summary[key])
    meta = ts.queries.set_index(pd.RangeIndex(len(ts.queries)))
    customer_type = pd.Series(
        np.where(meta["is_new_customer"], "new", "repeat"), index=meta.index, name="customer_type"
    )
    segment = meta["segment"].rename("segment")
    per_segment = pd.concat(
        [
            m.sliced(per_q, customer_type.loc[per_q.index]).assign(slice="customer_type"),
            m.sliced(per_q, segment.loc[per_q.index]).assign(slice="segment"),
        ]
    )
    contribution = source_contribution(ts, q, ranker_score, k=10) if has_ranker else pd.DataFrame()
    return TaskEvaluation(
        out, per_segment, ts.candidate_recall(), best_name, has_ranker, contribution
    )


def source_contribution(ts: TaskSet, q: np.ndarray, score: np.ndarray, *, k: int) -> pd.DataFrame:
    """Per source, its share of the top-``k`` rows of ``score`` and of the hits among them."""
    top = rank_within(q, score.astype(np.float64)) <= k
    source = np.asarray(ts.sources, dtype=object)[ts.best_source[top]] if len(ts.sources) else []
    frame = pd.DataFrame({"source": source, "hit": ts.label[top] > 0})
    grouped = frame.groupby("source")["hit"].agg(["size", "sum"])
    out = pd.DataFrame(
        {
            "share_of_top": grouped["size"] / max(int(top.sum()), 1),
            "share_of_hits": grouped["sum"] / max(int(frame["hit"].sum()), 1),
            "precision": grouped["sum"] / grouped["size"].clip(lower=1),
        }
    )
    return out.reindex(list(ts.sources)).fillna(0.0).rename_axis("source").reset_index()


def holdout_sets(
    model: XsellModel,
    shop: Shop,
    *,
    start: pd.Timestamp,
    end: pd.Timestamp,
    seed: int,
    max_queries: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, TaskSet]:
    """The holdout task sets of a model: queries in ``[start, end)`` against its snapshot
    (at most ``max_queries`` per task, a sample drawn with ``seed``; None: all).

    Tasks without a labelled holdout query are left out (the caller reports them).
    ``progress`` is called with the task name after each task.

    Raises:
        ValueError: The model's snapshot is later than ``start`` (it would see the holdout).
    """
    if model.snapshot.as_of_timestamp > pd.Timestamp(start):
        raise ValueError(
            f"the model's data ends {model.snapshot.as_of_timestamp}, after the holdout start {start}"
        )
    step = Step(pd.Timestamp(start), pd.Timestamp(end), max_queries)
    sets = {}
    for task in model.tasks:
        done = build_steps(
            shop,
            tasks=(task.name,),
            steps=[step],
            config=model.snapshot.config,
            seed=seed,
            snapshots={step.start: model.snapshot},
        )
        sets.update(join_steps((task.name,), done))
        if progress is not None:
            progress(task.name)
    return sets


def evaluate_model(
    model: XsellModel,
    sets: dict[str, TaskSet],
    *,
    primary: str = "ndcg_at_10",
    progress: Callable[[str], None] | None = None,
) -> dict[str, TaskEvaluation]:
    """Score each holdout task set with the model's rankers (where it has one) and evaluate.

    ``progress`` is called with the task name after each task.
    """
    out = {}
    for task, ts in sets.items():
        score = model.ranker_score(ts.X, task, num_threads=2) if task in model.boosters else None
        out[task] = evaluate_task(ts, score, model.snapshot, primary=primary)
        if progress is not None:
            progress(task)
    return out


def served_metrics(
    model: XsellModel, evals: dict[str, TaskEvaluation], *, primary: str
) -> dict[str, float]:
    """``<task>.served.<primary>``: the primary metric of each task's served policy."""
    return {
        f"{task}.served.{primary}": ev.value(model.policy(task), primary)
        for task, ev in evals.items()
    }


# --------------------------------------------------------------------------- headline and tables

HEADLINE_K = 10
# The headline metrics logged per task as ``<task>.<name>`` (see :func:`headline_metrics`).
HEADLINE_METRICS = (
    f"served.ndcg_at_{HEADLINE_K}",
    f"ndcg_at_{HEADLINE_K}",
    f"hit_rate_at_{HEADLINE_K}",
    "lift_over_best_baseline",
    "candidate_recall",
    "served_is_ranker",
)


def headline_metrics(model: XsellModel, evals: dict[str, TaskEvaluation]) -> dict[str, float]:
    """The few metrics per task logged as MLflow metrics (stable names, comparable at a glance).

    Per task: ``<task>.ndcg_at_10`` and ``<task>.hit_rate_at_10`` (the ranker's),
    ``<task>.served.ndcg_at_10`` (the served policy's), ``<task>.lift_over_best_baseline``
    (ranker NDCG@10 / best baseline NDCG@10), ``<task>.candidate_recall`` and
    ``<task>.served_is_ranker`` (1 or 0). A task without a ranker has no ranker figures (they
    would be NaN): its served figures and candidate recall remain. Everything else goes to the
    tables of :func:`baseline_table`, :func:`item_kind_table` and :func:`metric_table`.
    """
    ndcg, hit = f"ndcg_at_{HEADLINE_K}", f"hit_rate_at_{HEADLINE_K}"
    out: dict[str, float] = {}
    for task, ev in evals.items():
        policy = model.policy(task)
        best = ev.value(f"{BASELINE_PREFIX}{ev.best_baseline}", ndcg)
        ranker = ev.value(RANKER, ndcg)
        values = {
            ndcg: ranker,
            f"served.{ndcg}": ev.value(policy, ndcg),
            hit: ev.value(RANKER, hit),
            "lift_over_best_baseline": ranker / best if best > 0 else float("nan"),
            "candidate_recall": ev.metrics["candidate_recall"],
            "served_is_ranker": float(policy == RANKER),
        }
        out.update({f"{task}.{k}": float(v) for k, v in values.items() if np.isfinite(v)})
    return out


def _ranking_keys(ev: TaskEvaluation) -> list[str]:
    """The per-policy ranking metric names (those every baseline has), in a stable order."""
    prefix = f"baseline_{ev.best_baseline}."
    return [k.removeprefix(prefix) for k in ev.metrics if k.startswith(prefix)]


def baseline_table(ev: TaskEvaluation, served: str) -> pd.DataFrame:
    """The ranker and every baseline of one task on the same holdout, one row each.

    Columns: ``policy`` (``ranker`` or ``baseline:<name>``), ``best_baseline`` and ``served``
    flags, then every ranking metric (NDCG, MAP, recall and hit rate at each k, MRR). Rows are
    sorted by NDCG@10, best first; the ranker's row is left out when the task has no ranker.
    """
    keys = _ranking_keys(ev)
    names = sorted(
        {
            k.split(".", 1)[0].removeprefix("baseline_")
            for k in ev.metrics
            if k.startswith("baseline_")
        }
    )
    rows = []
    if ev.has_ranker:
        rows.append({"policy": RANKER, **{k: ev.metrics.get(k, np.nan) for k in keys}})
    for name in names:
        rows.append(
            {
                "policy": f"{BASELINE_PREFIX}{name}",
                **{k: ev.metrics.get(f"baseline_{name}.{k}", np.nan) for k in keys},
            }
        )
    table = pd.DataFrame(rows, columns=["policy", *keys])
    table.insert(1, "best_baseline", table["policy"] == f"{BASELINE_PREFIX}{ev.best_baseline}")
    table.insert(2, "served", table["policy"] == served)
    sort = f"ndcg_at_{HEADLINE_K}" if f"ndcg_at_{HEADLINE_K}" in table else "policy"
    return table.sort_values(sort, ascending=False, kind="stable").reset_index(drop=True)


def item_kind_table(ev: TaskEvaluation) -> pd.DataFrame:
    """Ranker and best baseline on new items and on re-bought items, one row per (kind, policy).

    Columns: ``item_kind``, ``policy``, ``n_queries``, ``candidate_recall`` and the sliced
    ranking metrics (e.g. ``ndcg_at_10``, ``hit_rate_at_10``, ``recall_at_10``).
    """
    rows = []
    for kind in ITEM_KINDS:
        base = {
            "item_kind": kind,
            "n_queries": ev.metrics.get(f"{kind}.n_queries", np.nan),
            "candidate_recall": ev.metrics.get(f"{kind}.candidate_recall", np.nan),
        }
        for policy, prefix in (
            (RANKER, f"{kind}."),
            (f"{BASELINE_PREFIX}{ev.best_baseline}", f"{kind}.baseline_{ev.best_baseline}."),
        ):
            values = {
                k.removeprefix(prefix): v
                for k, v in ev.metrics.items()
                if k.startswith(prefix) and "." not in k.removeprefix(prefix)
            }
            values = {k: v for k, v in values.items() if k not in ("n_queries", "candidate_recall")}
            if values:
                rows.append({**base, "policy": policy, **values})
    return pd.DataFrame(rows)


def metric_table(ev: TaskEvaluation) -> pd.DataFrame:
    """Every figure of :attr:`TaskEvaluation.metrics` as ``metric, value`` rows (nothing lost)."""
    return pd.DataFrame({"metric": list(ev.metrics), "value": list(ev.metrics.values())})

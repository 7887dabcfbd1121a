"""The training job: split, build features, fit both rankers, evaluate, track, register, promote.

``train(data_dir, config)`` is what ``xsell train`` runs. The run is recorded in MLflow even when
it fails (status FAILED); aliases change only at the very end, after everything succeeded.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.data import schema as s
from features.data.io import Shop, load_shop
from features.matrix import categorical_features
from features.pipeline import TaskSet, calibrate_merge_weights
from features.recommend import (
    BASELINE_PREFIX,
    RANKER,
    ModelLoadError,
    OutdatedModelError,
    XsellModel,
)
from features.snapshot import FeatureSnapshot
from features.tasks import all_tasks
from training.config import TrainConfig
from training.engines import Engine, LocalEngine, Window, open_engine
from training.evaluate import (
    KS,
    TaskEvaluation,
    baseline_table,
    choose_policy,
    evaluate_model,
    headline_metrics,
    holdout_sets,
    item_kind_table,
    metric_table,
    served_metrics,
)
from training.model import XsellPyfunc, load_model
from training.progress import Progress
from training.tracking import (
    CHALLENGER,
    CHAMPION,
    PromotionDecision,
    Tracker,
    promotion_decision,
)

log = logging.getLogger(__name__)
HOLDOUT = "holdout"  # the window name of the holdout sets built beside the others

PIP_REQUIREMENTS = ["lightgbm", "numpy", "scipy", "pandas", "pyarrow", "mlflow"]


@dataclass(frozen=True)
class Split:
    """Time windows of one run (fit and validation queries end before ``train_until``)."""

    fit_start: pd.Timestamp
    valid_start: pd.Timestamp
    valid_end: pd.Timestamp
    train_until: pd.Timestamp
    test_end: pd.Timestamp


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    run_id: str
    version: int
    evaluations: dict[str, TaskEvaluation]
    policies: dict[str, str]
    champion_metrics: dict[str, float] | None
    promoted: bool
    reason: str
    split: Split


def make_split(shop: Shop, config: TrainConfig, train_until: pd.Timestamp | None) -> Split:
    """Fit on ``[fit_start, valid_start)``, early-stop on ``[valid_start, valid_end)``, test on
    ``[train_until, test_end)``. Validation labels end by ``train_until``."""
    sc = config.split
    first, last = shop.time_range()
    until = (
        pd.Timestamp(train_until)
        if train_until is not None
        else (last - pd.Timedelta(days=sc.test_days)).normalize()
    )
    label_days = max(config.features.cross_sell_window_days, config.features.upsell_window_days)
    valid_end = until - pd.Timedelta(days=label_days)
    valid_start = valid_end - pd.Timedelta(days=sc.validation_days)
    fit_start = max(
        valid_start - pd.Timedelta(days=sc.train_days),
        first.normalize() + pd.Timedelta(days=sc.step_days),
    )
    if fit_start >= valid_start:
        raise ValueError(
            f"not enough history: data starts {first}, validation starts {valid_start}"
        )
    return Split(fit_start, valid_start, valid_end, until, until + pd.Timedelta(days=sc.test_days))


def data_fingerprint(folder: Path) -> str:
    """SHA-256 over the shop's table files (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.is_file() and path.suffix in (".parquet", ".csv"):
            h.update(path.name.encode())
            with path.open("rb") as fh:
                for block in iter(functools.partial(fh.read, 1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def git_commit() -> str:
    """The current git commit, or "unknown"."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flat(evals: dict[str, TaskEvaluation]) -> dict[str, float]:
    """Every metric of every task, ``<task>.<name>`` (hundreds: for tables, not MLflow metrics)."""
    return {f"{task}.{k}": v for task, ev in evals.items() for k, v in ev.metrics.items()}


def _importance_figure(model: XsellModel) -> Figure:
    fig = Figure(figsize=(6 * len(model.boosters), 7))
    axes = fig.subplots(1, len(model.boosters))
    for ax, (task, booster) in zip(np.atleast_1d(axes), model.boosters.items(), strict=True):
        gain = booster.feature_importance("gain")
        names = booster.feature_name()
        order = np.argsort(gain)[-20:]
        ax.barh([names[i] for i in order], gain[order])
        ax.set_title(f"{task}: top features by gain")
    fig.tight_layout()
    return fig


def _metric_vs_k_figure(evals: dict[str, TaskEvaluation]) -> Figure:
    fig = Figure(figsize=(5 * len(evals), 4))
    axes = fig.subplots(1, len(evals))
    for ax, (task, ev) in zip(np.atleast_1d(axes), evals.items(), strict=True):
        ax.plot(KS, [ev.metrics[f"ndcg_at_{k}"] for k in KS], marker="o", label="ranker")
        best = ev.best_baseline
        ax.plot(
            KS,
            [ev.metrics[f"baseline_{best}.ndcg_at_{k}"] for k in KS],
            marker="s",
            label=f"best baseline ({best})",
        )
        ax.set_xlabel("k")
        ax.set_ylabel("NDCG@k")
        ax.set_title(task)
        ax.legend()
    fig.tight_layout()
    return fig


def _baselines_figure(model: XsellModel, evals: dict[str, TaskEvaluation]) -> Figure:
    """NDCG@10 of the ranker and of every baseline, per task (the served policy highlighted)."""
    fig = Figure(figsize=(6 * len(evals), 6))
    axes = fig.subplots(1, len(evals))
    for ax, (task, ev) in zip(np.atleast_1d(axes), evals.items(), strict=True):
        table = baseline_table(ev, model.policy(task)).iloc[::-1]
        colors = ["tab:orange" if served else "tab:blue" for served in table["served"]]
        ax.barh(
            table["policy"].str.removeprefix(BASELINE_PREFIX), table["ndcg_at_10"], color=colors
        )
        ax.set_xlabel("NDCG@10")
        ax.set_title(f"{task}: ranker vs baselines (served in orange)")
    fig.tight_layout()
    return fig


def fit_and_validation_sets(
    shop: Shop,
    *,
    tasks: tuple[str, ...],
    config: TrainConfig,
    split: Split,
    progress: Progress | Callable[[str], None] | None = None,
    engine: Engine | None = None,
) -> dict[str, dict[str, Any]]:
    """Task -> ``{"fit": set, "validation": set}`` of a split, every task in one pass over the
    rolling cut-offs (``engine``, default the local one); a task missing from either window is
    left out.

    ``progress``: a message per build and, with bars, one bar over its cut-offs.
    """
    sets = (engine or LocalEngine()).task_sets(
        shop, tasks=tasks, config=config, windows=_windows(split), say=Progress.of(progress)
    )
    return _with_both(sets)


def _windows(split: Split, holdout: bool = False) -> list[Window]:
    """The fit and validation windows of ``split`` (and its test window as a holdout)."""
    windows = [
        Window("fit", split.fit_start, split.valid_start),
        Window("validation", split.valid_start, split.valid_end),
    ]
    if holdout:
        windows.append(Window(HOLDOUT, split.train_until, split.test_end, holdout=True))
    return windows


def _with_both(sets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The tasks that have both a fit and a validation set."""
    return {task: pair for task, pair in sets.items() if "fit" in pair and "validation" in pair}


def _calibrated(
    shop: Shop, cfg: TrainConfig, split: Split, say: Progress
) -> tuple[TrainConfig, dict[pd.Timestamp, FeatureSnapshot]]:
    """``cfg`` with the candidate merge learned on the first fit step (unless the configuration
    fixes it), and the snapshot that step built (by cut-off: the first fit cut-off's, reused)."""
    if cfg.features.merge_weights:
        return cfg, {}
    start = split.fit_start
    end = min(start + pd.Timedelta(days=cfg.split.step_days), split.valid_start)
    weights: dict[str, tuple[float, ...]] = {}
    calibration: dict[pd.Timestamp, FeatureSnapshot] = {}  # one snapshot for every task
    tasks = all_tasks()
    say(f"learning the candidate merge on {start.date()} .. {end.date()}")
    with say.step("candidate sources", len(tasks), unit="tasks") as step:
        for task in tasks:
            weights.update(
                calibrate_merge_weights(
                    shop,
                    task=task.name,
                    start=start,
                    end=end,
                    config=cfg.features,
                    snapshots=calibration,
                    seed=cfg.seed,
                )
            )
            step.advance(note=task.name)
    features = cfg.features.model_copy(update={"merge_weights": weights})
    return cfg.model_copy(update={"features": features}), calibration


def _task_sets(
    shop: Shop, *, config: TrainConfig, split: Split, say: Progress, engine: Engine
) -> tuple[dict[str, dict[str, Any]], dict[str, TaskSet] | None]:
    """Fit and validation sets of every task that has labelled queries in both windows, and
    the holdout sets of the test window built in the same pass when the engine builds them
    (the sets :func:`training.evaluate.holdout_sets` builds against the snapshot at
    ``train_until``; None: the engine leaves them to the caller)."""
    names = tuple(task.name for task in all_tasks())
    windows = _windows(split, holdout=engine.builds_holdout)
    built = engine.task_sets(shop, tasks=names, config=config, windows=windows, say=say)
    holdout = None
    if engine.builds_holdout:
        holdout = {task: sets.pop(HOLDOUT) for task, sets in built.items() if HOLDOUT in sets}
    out = _with_both(built)
    for task in names:
        if task not in out:
            say(f"{task}: no ranker (no labelled queries); the task is served by its best baseline")
    return out, holdout


def _fit_rankers(
    sets: dict[str, dict[str, Any]],
    *,
    config: TrainConfig,
    snapshot: FeatureSnapshot,
    tracker: Tracker,
    say: Progress,
    engine: Engine,
) -> dict[str, lgb.Booster]:
    boosters = {}
    for task, pair in sets.items():
        say(f"{task}: fitting the ranker on {len(pair['fit']):,d} rows ({engine.name} engine)")
        try:
            with say.step(f"{task} fit", config.ranker.max_rounds, unit="rounds") as step:
                boosters[task] = engine.fit(
                    pair["fit"],
                    pair["validation"],
                    categorical=list(categorical_features(snapshot)),
                    config=config,
                    callbacks=[say.lightgbm_callback(step)] if say.bars else [],
                )
        except ValueError as exc:  # no query with both a positive and a negative candidate
            say(f"{task}: no ranker ({exc}); the task is served by its best baseline")
            continue
        booster = boosters[task]
        tracker.log_metrics(
            {
                f"{task}.best_iteration": float(
                    booster.best_iteration or booster.current_iteration()
                ),
                f"{task}.fit_rows": float(len(pair["fit"])),
                f"{task}.fit_queries": float(len(pair["fit"].queries)),
            }
        )
    return boosters


def _policies(
    model: XsellModel, evals: dict[str, TaskEvaluation], cfg: TrainConfig
) -> dict[str, str]:
    """The served policy per task: the ranker only where it beats the best baseline."""
    out = {}
    for task in all_tasks():
        if task.name in evals:
            out[task.name] = choose_policy(
                evals[task.name], primary=cfg.primary_metric, margin=cfg.promotion_margin
            )
        else:  # no holdout query: nothing shows the ranker is better than the plain heuristic
            out[task.name] = f"{BASELINE_PREFIX}{task.baselines[0].name}"
    return out


def promotion_against(
    served: dict[str, float], champion: dict[str, float] | None
) -> PromotionDecision:
    """Promote if, task by task, the served metrics are at least as good as the champion's
    (``None``: no champion to beat; ``{}``: a champion that could not be evaluated, kept)."""
    if champion == {}:
        return PromotionDecision(False, "not promoted: the champion could not be evaluated", ())
    primary = [k for k in served if champion is None or k in champion]
    return promotion_decision(
        {k: served[k] for k in primary},
        None if champion is None else {k: champion[k] for k in primary},
        primary_metrics=primary or list(served),
        margin=0.0,
        ties_pass=True,
    )


def _champion_served(
    tracker: Tracker, cfg: TrainConfig, shop: Shop, split: Split, say: Progress
) -> tuple[dict[str, float] | None, str]:
    """The champion's served metrics on this run's holdout and a note for the decision.

    ``None``: no champion, or one this code cannot serve (another format, features of earlier
    feature code), which the new version replaces. ``{}``: a champion that could not be loaded
    or evaluated for another reason (a corrupt bundle): the new version does not replace it.
    """
    current = tracker.get_version_by_alias(cfg.model_name, CHAMPION)
    if current is None:
        return None, ""
    say(f"evaluating the champion (version {current.version}) on the same holdout")
    try:
        champ = load_model(f"models:/{cfg.model_name}/{int(current.version)}")
    except OutdatedModelError as exc:  # this code cannot serve it anyway: replaced
        return None, f" (champion version {current.version} is outdated and replaced: {exc})"
    except ModelLoadError as exc:
        return {}, f" (champion version {current.version} not loadable: {exc})"
    try:
        _, evals = _evaluate(champ, shop, split, cfg, say, f"champion v{current.version}")
    except (ValueError, KeyError, IndexError) as exc:
        return {}, f" (champion not comparable on this holdout: {exc})"
    return served_metrics(champ, evals, primary=cfg.primary_metric), ""


def _evaluate(
    model: XsellModel,
    shop: Shop,
    split: Split,
    cfg: TrainConfig,
    say: Progress,
    label: str,
    built: dict[str, TaskSet] | None = None,
) -> tuple[dict[str, TaskSet], dict[str, TaskEvaluation]]:
    """Holdout sets (``built``: already built against ``model``'s snapshot) and evaluations of
    ``model`` on the split's test window (one bar)."""
    with say.step(f"evaluating {label}", 2 * len(model.tasks), unit="steps") as step:
        if built is None:
            sets = holdout_sets(
                model,
                shop,
                start=split.train_until,
                end=split.test_end,
                seed=cfg.seed,
                max_queries=cfg.split.max_holdout_queries,
                progress=lambda task: step.advance(note=f"{task} holdout"),
            )
        else:
            sets = built
            for task in model.tasks:
                step.advance(note=f"{task.name} holdout (built with the training sets)")
        evals = evaluate_model(
            model,
            sets,
            primary=cfg.primary_metric,
            progress=lambda task: step.advance(note=f"{task} scored"),
        )
    return sets, evals


def _log_tables(tracker: Tracker, model: XsellModel, evals: dict[str, TaskEvaluation]) -> None:
    """Everything beyond the headline metrics, as CSV artifacts per task."""
    for task, ev in evals.items():
        tracker.log_table_csv(baseline_table(ev, model.policy(task)), f"{task}/baselines.csv")
        tracker.log_table_csv(item_kind_table(ev), f"{task}/item_kinds.csv")
        tracker.log_table_csv(metric_table(ev), f"{task}/metrics.csv")
        tracker.log_table_csv(ev.per_segment.reset_index(), f"{task}/per_segment.csv")
        recall = pd.DataFrame(
            {"source": list(ev.candidate_recall), "recall": list(ev.candidate_recall.values())}
        )
        tracker.log_table_csv(recall, f"{task}/candidate_recall.csv")
        if len(ev.source_contribution):
            tracker.log_table_csv(ev.source_contribution, f"{task}/source_contribution.csv")


def version_tags(
    model: XsellModel, tags: dict[str, object], decision_reason: str, promote: bool
) -> dict[str, str]:
    """The registered version's tags: served policy per task, data range, promotion decision."""
    return {
        **{f"policy.{task}": policy for task, policy in model.policies.items()},
        "data_range": str(tags["data_range"]),
        "train_range": str(tags["train_range"]),
        "test_range": str(tags["test_range"]),
        "train_until": str(model.meta.get("train_until")),
        "data_fingerprint": str(tags["data_fingerprint"]),
        "promotion": "promoted" if promote else "not promoted",
        "promotion.reason": decision_reason[:500],
    }


def version_description(
    model: XsellModel, evals: dict[str, TaskEvaluation], decision_reason: str, cfg: TrainConfig
) -> str:
    """The registered version's description: data range, served policies, headline metrics."""
    key = cfg.primary_metric
    lines = [
        f"data {model.meta.get('data_range')}; trained until {model.meta.get('train_until')}",
    ]
    headline = headline_metrics(model, evals)
    for task, ev in evals.items():
        policy = model.policy(task)
        best = ev.best_baseline
        lift = headline.get(f"{task}.lift_over_best_baseline", float("nan"))
        lines.append(
            f"{task}: served by {policy}; ranker {key} {ev.value(RANKER, key):.4f} "
            f"(hit rate@10 {ev.value(RANKER, 'hit_rate_at_10'):.3f}, "
            f"lift over best baseline {lift:.2f}), "
            f"best baseline {best} {ev.metrics[f'baseline_{best}.{key}']:.4f}, "
            f"candidate recall {ev.metrics['candidate_recall']:.3f}"
        )
    lines.append(f"promotion: {decision_reason}")
    return "\n".join(lines)


def train(
    data: str | Path,
    *,
    config: TrainConfig | None = None,
    train_until: pd.Timestamp | None = None,
    root: Path | None = None,
    experiment: str | None = None,
    progress: Progress | Callable[[str], None] | None = None,
) -> TrainResult:
    """Run the whole training job on a shop folder.

    Args:
        data: Shop folder.
        config: Training configuration (defaults when None).
        train_until: Last moment the run learns from (default: the last ``test_days`` of data
            are held out).
        root: MLflow store folder (default: ``MLFLOW_TRACKING_URI`` or the repo's ``mlruns/``).
        experiment: Experiment name (default: ``xsell-<data folder name>``).
        progress: Called with short progress messages; a :class:`Progress` may also draw
            bars with an ETA for the long steps.
    """
    cfg = config or TrainConfig()
    say = Progress.of(progress if progress is not None else log.info)
    data = Path(data)
    shop = load_shop(data)
    split = make_split(shop, cfg, train_until)
    tracker = Tracker(experiment=experiment or f"xsell-{data.resolve().name}", root=root)
    first, last = shop.time_range()
    tags = {
        "git_commit": git_commit(),
        "data_dir": str(data.resolve()),
        "data_fingerprint": data_fingerprint(data),
        "rows.customers": len(shop.customers),
        "rows.products": len(shop.products),
        "rows.purchases": len(shop.purchases),
        "rows.events": 0 if shop.events is None else len(shop.events),
        "consumables": "labelled" if shop.consumable_labelled else "inferred",
        "data_range": f"{first} .. {last}",
        "train_range": f"{split.fit_start} .. {split.train_until}",
        "test_range": f"{split.train_until} .. {split.test_end}",
    }
    with tracker.start_run(run_name=f"train-{split.train_until.date()}", tags=tags):
        tracker.log_params(cfg.model_dump(mode="json"))
        tracker.log_params({"train_until": str(split.train_until)})
        tracker.log_dict(cfg.model_dump(mode="json"), "config.json")
        cfg, built = _calibrated(shop, cfg, split, say)
        tracker.log_dict(cfg.features.merge_weights, "merge_weights.json")
        with open_engine(cfg) as engine:
            for as_of in list(built):
                engine.keep(built.pop(as_of), as_of)
            sets, holdout = _task_sets(shop, config=cfg, split=split, say=say, engine=engine)
            if not sets:
                raise ValueError("no task has labelled queries in the training window")
            say(f"building the serving snapshot at {split.train_until}")
            final_snapshot = engine.snapshot(shop, as_of=split.train_until, config=cfg)
            boosters = _fit_rankers(
                sets,
                config=cfg,
                snapshot=final_snapshot,
                tracker=tracker,
                say=say,
                engine=engine,
            )
            sample = engine.sample(next(iter(sets.values()))["fit"])
            del sets
        model = XsellModel(
            snapshot=final_snapshot,
            boosters=boosters,
            policies={task.name: RANKER for task in all_tasks()},
            meta={
                "train_until": str(split.train_until),
                "data_range": tags["data_range"],
                "data_fingerprint": tags["data_fingerprint"],
            },
        )
        say("evaluating on the holdout")
        holdout, evals = _evaluate(model, shop, split, cfg, say, "the new model", holdout)
        model.policies = _policies(model, evals, cfg)
        flat = _flat(evals)
        served = served_metrics(model, evals, primary=cfg.primary_metric)
        # a few headline metrics per task; the rest as tables (comparable at a glance in MLflow)
        tracker.log_metrics(
            {
                **headline_metrics(model, evals),
                **{k: v for k, v in served.items() if np.isfinite(v)},
            }
        )
        tracker.set_tags({f"policy.{task}": policy for task, policy in model.policies.items()})
        tracker.set_tags({f"{task}.best_baseline": ev.best_baseline for task, ev in evals.items()})
        _log_tables(tracker, model, evals)
        if model.boosters:
            tracker.log_figure(_importance_figure(model), "feature_importance.png")
        tracker.log_figure(_metric_vs_k_figure(evals), "metric_vs_k.png")
        tracker.log_figure(_baselines_figure(model, evals), "baselines.png")
        tracker.log_input(
            pd.DataFrame(sample.X[:2000], columns=sample.columns),
            name=f"{sample.task}_fit_features",
            context="training",
        )
        model.meta["metrics"] = {k: v for k, v in flat.items() if k.endswith(cfg.primary_metric)}
        model.meta["served_metrics"] = served
        model.meta["run_id"] = tracker.run_id
        input_example = _input_example(model, holdout)
        with tempfile.TemporaryDirectory() as tmp:
            folder = model.save(Path(tmp) / "xsell-model")
            output_example = model.recommend(input_example)
            say("logging and registering the model")
            uri = tracker.log_model(
                XsellPyfunc(),
                folder,
                input_example,
                output_example,
                pip_requirements=PIP_REQUIREMENTS,
            )
        # the champion's served policies on the same holdout, task by task
        champion_metrics, reason_extra = _champion_served(tracker, cfg, shop, split, say)
        decision = promotion_against(served, champion_metrics)
        tracker.log_dict(decision.to_dict(), "promotion.json")
        if champion_metrics:
            tracker.log_metrics({f"champion.{k}": v for k, v in champion_metrics.items()})
        tracker.set_tags({"promotion": "promoted" if decision.promote else "not promoted"})
        run_id = tracker.run_id
        # the last step of the run: a failure before this registers nothing
        version = tracker.register(uri, name=cfg.model_name)
        reason = decision.reason + reason_extra
        tracker.describe_version(
            cfg.model_name,
            version,
            version_description(model, evals, reason, cfg),
            version_tags(model, tags, reason, decision.promote),
        )
    # aliases only after the run finished successfully
    tracker.set_alias(cfg.model_name, CHALLENGER, version)
    if decision.promote:
        tracker.promote(cfg.model_name, version)
    return TrainResult(
        run_id=run_id,
        version=version,
        evaluations=evals,
        policies=dict(model.policies),
        champion_metrics=champion_metrics,
        promoted=decision.promote,
        reason=decision.reason + reason_extra,
        split=split,
    )


def _input_example(model: XsellModel, holdout: dict[str, TaskSet]) -> pd.DataFrame:
    """A few real holdout queries in ``xsell recommend``'s input format."""
    ex = pd.concat([ts.queries.head(2) for ts in holdout.values()], ignore_index=True)
    return pd.DataFrame(
        {
            "query_id": ex["query_id"].astype(str),
            "customer_id": ex[s.CUSTOMER_ID].astype(str),
            "placement": ex["placement"].astype(str),
            "anchor_product_id": ex["anchor_product_id"].astype(object),
            "cart_product_ids": [
                [str(model.snapshot.product_ids[int(model.snapshot.top.global_top[0])])]
                for _ in range(len(ex))
            ],
            "as_of": model.snapshot.as_of_timestamp,
            "k": 3,
        }
    )

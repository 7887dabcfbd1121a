"""Where a training run's heavy work runs: this machine (``local``) or a Dask cluster (``dask``).

An engine builds the fit and validation sets of every task, the serving snapshot, and fits one
ranker per task; :func:`training.train.train` does the rest (evaluation on the holdout, MLflow,
registration, promotion) the same way for both.

The Dask engine (``engine: dask`` in the config, ``xsell train --engine dask``):

* writes the purchases as Parquet hashed by customer into buckets (``dask.work_dir``) and counts
  the snapshots' basket co-occurrences there as a distributed group-by;
* builds the training-set parts on the workers (one per cut-off, task and customer bucket; the
  snapshot is scattered once per cut-off); the parts stay in the workers' memory;
* fits ``lightgbm.dask.DaskLGBMRanker`` on them, every query group inside one part. LightGBM's
  Dask interface has no early stopping, so the number of trees comes from a single-machine,
  early-stopped run on a sample of the parts (``dask.tree_sample``).

What still runs on the client: loading the shop, drawing the queries and labels, the rest of
each snapshot (per-product and per-customer tables, order sequences, latent factors), and the
holdout evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.config import FeatureConfig
from features.data.io import Shop
from features.pipeline import Part, Step, TaskSet, build_steps, cutoffs, join_steps
from features.snapshot import FeatureSnapshot, build_snapshot
from training.config import DaskConfig, TrainConfig
from training.progress import Progress
from training.ranker import fit_ranker, query_groups, ranker_params, trainable_rows

Sets = dict[str, dict[str, Any]]  # task -> {"fit": set, "validation": set, ...}


@dataclass(frozen=True)
class Window:
    """A window of a run's sets: rolling cut-offs over ``[start, end)`` (``split.step_days``
    apart, ``split.max_queries_per_cutoff`` queries per task each) or, for a ``holdout``
    window, one cut-off at ``start`` with ``split.max_holdout_queries`` per task (the queries
    and seed :func:`training.evaluate.holdout_sets` draws)."""

    name: str
    start: pd.Timestamp
    end: pd.Timestamp
    holdout: bool = False

    def steps(self, config: TrainConfig) -> list[Step]:
        if self.holdout:
            return [
                Step(self.start, self.end, config.split.max_holdout_queries, keep_snapshot=True)
            ]
        bounds = itertools.pairwise(cutoffs(self.start, self.end, config.split.step_days))
        return [Step(lo, hi, config.split.max_queries_per_cutoff) for lo, hi in bounds]


class Engine(Protocol):
    """What :func:`training.train.train` asks of an engine."""

    name: str
    builds_holdout: bool  # task_sets builds holdout windows (else the caller does)

    def task_sets(
        self,
        shop: Shop,
        *,
        tasks: tuple[str, ...],
        config: TrainConfig,
        windows: Sequence[Window],
        say: Progress,
    ) -> Sets:
        """Task -> window name -> set (an engine may leave out ``holdout`` windows, which
        the caller then builds itself)."""
        ...

    def snapshot(
        self, shop: Shop, *, as_of: pd.Timestamp, config: TrainConfig
    ) -> FeatureSnapshot: ...

    def keep(self, snapshot: FeatureSnapshot, as_of: pd.Timestamp) -> None:
        """A snapshot the run built before (at ``as_of``) that the engine may use instead of
        building the same one again."""
        ...

    def fit(
        self,
        fit: Any,
        valid: Any,
        *,
        categorical: list[str],
        config: TrainConfig,
        callbacks: Sequence[Callable[..., None]] = (),
    ) -> lgb.Booster: ...

    def sample(self, fit: Any) -> TaskSet:
        """A local piece of a fit set (its first rows are logged as the run's input sample)."""
        ...


@dataclass
class LocalEngine:
    """NumPy/pandas and LightGBM on this machine (cut-offs in ``config.workers`` processes).

    No snapshot is built twice in a run: one given to :meth:`keep` (the merge calibration's, at
    the first fit cut-off) is sent to the process of the step at its cut-off, and a holdout
    window's (at ``train_until``: the serving snapshot) comes back from the process that built
    it, for :meth:`snapshot` to hand out."""

    name: str = "local"
    builds_holdout: bool = True
    kept: dict[tuple[pd.Timestamp, str], FeatureSnapshot] = field(default_factory=dict, repr=False)

    def keep(self, snapshot: FeatureSnapshot, as_of: pd.Timestamp) -> None:
        self.kept[pd.Timestamp(as_of), _key(snapshot.config)] = snapshot

    def _take(self, as_of: pd.Timestamp, config: FeatureConfig) -> FeatureSnapshot | None:
        """The kept snapshot at ``as_of`` built with ``config`` but for its merge weights (which
        only order candidates: no table of a snapshot depends on them), handed out once."""
        snap = self.kept.pop((pd.Timestamp(as_of), _key(config)), None)
        return None if snap is None else dataclasses.replace(snap, config=config)

    def task_sets(
        self,
        shop: Shop,
        *,
        tasks: tuple[str, ...],
        config: TrainConfig,
        windows: Sequence[Window],
        say: Progress,
    ) -> Sets:
        """Every window's cut-offs in one pool of processes (holdout windows first: their one
        cut-off holds the most queries)."""
        ordered = sorted(windows, key=lambda w: not w.holdout)
        steps = [step for w in ordered for step in w.steps(config)]
        sizes = [len(w.steps(config)) for w in ordered]
        workers = config.workers_for(shop, len(steps))
        if not say.bars:
            counts = ", ".join(f"{w.name} {n}" for w, n in zip(ordered, sizes, strict=True))
            say(f"building features ({counts} cut-offs, {workers} workers)")
        given = {st.start: snap for st in steps if (snap := self._take(st.start, config.features))}
        kept: dict[pd.Timestamp, FeatureSnapshot] = {}
        with say.cutoffs("features", len(steps)) as per_cutoff:
            done = build_steps(
                shop,
                tasks=tasks,
                steps=steps,
                config=config.features,
                seed=config.seed,
                snapshots=given,
                progress=per_cutoff,
                workers=workers,
                kept=kept,
            )
        for as_of, snap in kept.items():
            self.keep(snap, as_of)
        sets: Sets = {}
        for w, (lo, hi) in zip(ordered, itertools.pairwise(np.cumsum([0, *sizes])), strict=True):
            for task, built in join_steps(tasks, done[lo:hi]).items():
                sets.setdefault(task, {})[w.name] = built
        return sets

    def snapshot(self, shop: Shop, *, as_of: pd.Timestamp, config: TrainConfig) -> FeatureSnapshot:
        """The kept snapshot at ``as_of`` (:meth:`_take`), else one built."""
        kept = self._take(as_of, config.features)
        return (
            kept if kept is not None else build_snapshot(shop, as_of=as_of, config=config.features)
        )

    def fit(
        self,
        fit: TaskSet,
        valid: TaskSet,
        *,
        categorical: list[str],
        config: TrainConfig,
        callbacks: Sequence[Callable[..., None]] = (),
    ) -> lgb.Booster:
        return fit_ranker(
            fit,
            valid,
            categorical=categorical,
            config=config.ranker,
            seed=config.seed,
            callbacks=callbacks,
        )

    def sample(self, fit: TaskSet) -> TaskSet:
        return fit


def _key(config: FeatureConfig) -> str:
    """What a kept snapshot must have been built with to stand for a new one."""
    return config.model_dump_json(exclude={"merge_weights"})


def _set_arguments(
    tasks: tuple[str, ...],
    config: TrainConfig,
    lo: pd.Timestamp,
    hi: pd.Timestamp,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The keyword arguments both engines' set builders take for the window ``[lo, hi)``."""
    return {
        "tasks": tasks,
        "start": lo,
        "end": hi,
        "config": config.features,
        "step_days": config.split.step_days,
        "max_queries_per_cutoff": config.split.max_queries_per_cutoff,
        "seed": config.seed,
        "progress": progress,
    }


def _per_window(
    windows: Sequence[Window],
    config: TrainConfig,
    build: Callable[[str, pd.Timestamp, pd.Timestamp, int], dict[str, Any]],
) -> Sets:
    """Task -> window name -> set of the rolling windows, ``build(name, lo, hi, n_cutoffs)``
    giving one window's sets."""
    sets: Sets = {}
    for w in windows:
        if w.holdout:
            continue
        for task, built in build(w.name, w.start, w.end, len(w.steps(config))).items():
            sets.setdefault(task, {})[w.name] = built
    return sets


def _trainable(part: Part) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A part's rows that teach the ranker (:func:`training.ranker.trainable_rows`): X, label,
    query group sizes."""
    keep = trainable_rows(part.rows["query_id"], part.rows["label"])
    return (
        part.rows["X"][keep],
        part.rows["label"][keep].astype(np.float64),
        query_groups(part.rows["query_id"][keep]) if keep.any() else np.zeros(0, np.int64),
    )


@dataclass
class DaskEngine:
    """The pipeline on a Dask cluster (see the module docstring); open with :func:`open_engine`."""

    client: Any
    config: DaskConfig
    folder: str
    name: str = "dask"
    builds_holdout: bool = False
    _counter: Any = None  # the basket counter of the run's shop (its purchases partitioned once)
    _shop: Shop | None = None

    def counter(self, shop: Shop, config: TrainConfig) -> Any:
        """The cluster's basket counter for ``shop`` (its purchases partitioned once)."""
        from features.distributed import DaskBasketCounter, partition_purchases
        from features.snapshot import shop_catalog

        if self._shop is not shop:
            purchases = partition_purchases(
                shop, f"{self.folder}/purchases", self.config.n_buckets
            ).persist()
            ids = shop_catalog(shop).products["product_id"].to_numpy(dtype=object)
            self._counter = DaskBasketCounter(purchases, ids, config.features.history_days)
            self._shop = shop
        return self._counter

    def task_sets(
        self,
        shop: Shop,
        *,
        tasks: tuple[str, ...],
        config: TrainConfig,
        windows: Sequence[Window],
        say: Progress,
    ) -> Sets:
        """The rolling windows' sets on the cluster; holdout windows are left to the caller
        (evaluation runs on the client)."""
        from features.distributed import distributed_task_sets

        counter = self.counter(shop, config)

        def build(name: str, lo: pd.Timestamp, hi: pd.Timestamp, n_cutoffs: int) -> dict[str, Any]:
            say(
                f"building {name} features on the cluster ({n_cutoffs} cut-offs, "
                f"{self.config.n_buckets} customer buckets)"
            )
            return distributed_task_sets(
                self.client,
                shop,
                **_set_arguments(tasks, config, lo, hi, say),
                buckets=self.config.n_buckets,
                counter=counter,
            )

        return _per_window(windows, config, build)

    def snapshot(self, shop: Shop, *, as_of: pd.Timestamp, config: TrainConfig) -> FeatureSnapshot:
        return build_snapshot(
            shop, as_of=as_of, config=config.features, counter=self.counter(shop, config)
        )

    def keep(self, snapshot: FeatureSnapshot, as_of: pd.Timestamp) -> None:
        """Nothing is kept: the cluster's parts are built against snapshots scattered from the
        client per cut-off."""

    def _sample_parts(self, n_parts: int) -> list[int]:
        every = max(1, round(1 / self.config.tree_sample))
        return list(range(0, n_parts, every))

    def n_trees(self, fit: Any, valid: Any, *, categorical: list[str], config: TrainConfig) -> int:
        """Trees of the Dask ranker: the best iteration of a single-machine, early-stopped run on
        a sample of the fit and validation parts."""
        fit_sample = fit.gather(self.client, self._sample_parts(len(fit.parts)))
        valid_sample = valid.gather(self.client, self._sample_parts(len(valid.parts)))
        booster = fit_ranker(
            fit_sample,
            valid_sample,
            categorical=categorical,
            config=config.ranker,
            seed=config.seed,
        )
        return max(1, booster.best_iteration or booster.current_iteration())

    def fit(
        self,
        fit: Any,
        valid: Any,
        *,
        categorical: list[str],
        config: TrainConfig,
        callbacks: Sequence[Callable[..., None]] = (),
    ) -> lgb.Booster:
        import dask.array as da
        from lightgbm.dask import DaskLGBMRanker

        trees = self.n_trees(fit, valid, categorical=categorical, config=config)
        client = self.client
        trainable = [client.submit(_trainable, p) for p in fit.parts]
        shapes = client.gather(
            [client.submit(lambda t: (len(t[1]), len(t[2])), t) for t in trainable]
        )
        chosen = [(t, n, g) for t, (n, g) in zip(trainable, shapes, strict=True) if n > 0]
        if not chosen:
            raise ValueError(f"{fit.task}: no query has both a positive and a negative candidate")
        n_cols = len(fit.columns)

        def column(i: int, shape: Callable[[int, int], tuple[int, ...]], dtype: Any) -> Any:
            return da.concatenate(
                [
                    da.from_delayed(client.submit(lambda t, i=i: t[i], t), shape(n, g), dtype=dtype)
                    for t, n, g in chosen
                ]
            )

        X = column(0, lambda n, g: (n, n_cols), np.float32)
        y = column(1, lambda n, g: (n,), np.float64)
        group = column(2, lambda n, g: (g,), np.int64)
        params = ranker_params(config.ranker, config.seed)
        params.pop("num_threads")
        params.pop("verbosity")
        ranker = DaskLGBMRanker(
            client=client,
            n_estimators=trees,
            verbose=-1,
            **params,
        )
        columns = list(fit.columns)
        with warnings.catch_warnings():
            # the Dask estimator always carries sklearn's n_jobs and warns that it ignores it
            # (threads are the workers' own)
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            ranker.fit(
                X,
                y,
                group=group,
                feature_name=columns,
                categorical_feature=[columns.index(c) for c in categorical if c in columns],
            )
        booster: lgb.Booster = ranker.booster_
        return booster

    def sample(self, fit: Any) -> TaskSet:
        return fit.gather(self.client, [0])


@contextlib.contextmanager
def open_engine(config: TrainConfig) -> Iterator[Engine]:
    """The configured engine, its cluster (if any) closed on exit.

    Raises:
        ValueError: The Dask scheduler cannot be reached.
    """
    if config.engine == "local":
        yield LocalEngine()
        return
    from distributed import Client, LocalCluster

    dask = config.dask
    with contextlib.ExitStack() as stack:
        if dask.scheduler:
            try:
                client = stack.enter_context(Client(dask.scheduler, timeout="15s"))
            except (OSError, TimeoutError) as exc:
                raise ValueError(
                    f"dask.scheduler: cannot reach the Dask scheduler at {dask.scheduler} ({exc})"
                ) from exc
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=dask.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
            )
            client = stack.enter_context(Client(cluster))
        folder = dask.work_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="xsell-dask-")
        )
        yield DaskEngine(client=client, config=dask, folder=str(folder))

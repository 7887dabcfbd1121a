"""Batch feature building over rolling cut-offs: the training side of the one code path.

For cut-offs ``T_0 < T_1 < ...`` a snapshot is built from data before ``T_i`` and the queries
whose ``as_of`` is in ``[T_i, T_{i+1})`` are scored against it, in chunks of queries, with
the same :func:`features.matrix.build_features` that serving calls for one query.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from features.arrays import is_in
from features.batch import QUERY_ID, batch_from_frame
from features.candidates import RANK_BANDS, candidate_sets, merge_candidates, rank_band
from features.columns import source_columns
from features.config import FeatureConfig
from features.data import schema as s
from features.data.io import Shop
from features.guardrails import allowed
from features.matrix import FeatureMatrix, build_features, feature_columns
from features.queries import REBUY, LabelledQueries
from features.snapshot import FeatureSnapshot, build_snapshot
from features.tasks import get_task

log = logging.getLogger(__name__)

CHUNK_QUERIES = 4000


@dataclass(frozen=True)
class TaskSet:
    """Candidates of one task with features and labels, rows grouped by query.

    Attributes:
        task: The task.
        X: ``(rows, features)`` float32.
        columns: Feature names.
        label: 1 for a positive candidate, else 0.
        rebuy: True for a positive the customer had bought before the query (a re-buy).
        allowed: True where the row passes the task's guardrails (``features.guardrails``).
        query_id: Query id per row.
        product_id: Product id per row.
        best_source: Best-ranking source index per row (into ``sources``).
        reason_product: Context product id behind the strongest co-occurrence ("" if none).
        queries: One row per query: ``query_id, customer_id, as_of, placement,
            anchor_product_id, n_positives, n_positives_rebuy, n_found, n_found_rebuy,
            is_new_customer, segment`` plus ``found_by_<source>`` counts.
        sources: Source names of the task.
    """

    task: str
    X: np.ndarray
    columns: list[str]
    label: np.ndarray
    rebuy: np.ndarray
    allowed: np.ndarray
    query_id: np.ndarray
    product_id: np.ndarray
    best_source: np.ndarray
    reason_product: np.ndarray
    queries: pd.DataFrame
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.label)

    def candidate_recall(self) -> dict[str, float]:
        """Share of positive labels that reach the candidates, merged and per source."""
        total = max(int(self.queries["n_positives"].sum()), 1)
        out = {"merged": float(self.queries["n_found"].sum()) / total}
        for name in self.sources:
            out[name] = float(self.queries[f"found_by_{name}"].sum()) / total
        return out

    def select_queries(self, mask: np.ndarray) -> TaskSet:
        """The subset of rows whose query is selected by the per-query boolean ``mask``."""
        rows = np.isin(self.query_id, self.queries.loc[mask, QUERY_ID].to_numpy(dtype=object))
        return TaskSet(
            task=self.task,
            X=self.X[rows],
            columns=self.columns,
            label=self.label[rows],
            rebuy=self.rebuy[rows],
            allowed=self.allowed[rows],
            query_id=self.query_id[rows],
            product_id=self.product_id[rows],
            best_source=self.best_source[rows],
            reason_product=self.reason_product[rows],
            queries=self.queries.loc[mask].reset_index(drop=True),
            sources=self.sources,
        )


def cutoffs(start: pd.Timestamp, end: pd.Timestamp, step_days: int) -> list[pd.Timestamp]:
    """Rolling cut-offs ``start, start + step, ...`` strictly before ``end``, then ``end``."""
    out = list(pd.date_range(start, end, freq=f"{step_days}D", inclusive="left"))
    return [*out, pd.Timestamp(end)]


def label_matrix(
    query: np.ndarray,
    product: np.ndarray,
    batch_query_ids: np.ndarray,
    snapshot: FeatureSnapshot,
    labels: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray]:
    """Per (query position, product position) row: 1 where it is a positive label, and whether
    that positive is a re-buy."""
    rows = pd.MultiIndex.from_arrays(
        [batch_query_ids[query].astype(str), snapshot.product_ids[product].astype(str)]
    )

    def index(frame: pd.DataFrame) -> pd.MultiIndex:
        return pd.MultiIndex.from_arrays(
            [frame[QUERY_ID].astype(str).to_numpy(), frame[s.PRODUCT_ID].astype(str).to_numpy()]
        )

    rebuys = labels.loc[labels[REBUY].to_numpy(dtype=bool)]
    return rows.isin(index(labels)).astype(np.int8), rows.isin(index(rebuys))


def sample_queries(
    lq: LabelledQueries, n: int | None, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """At most ``n`` of the queries (None: all), in their order, and their labels."""
    queries, labels = lq.queries, lq.labels
    if n is not None and len(queries) > n:
        queries = queries.iloc[np.sort(rng.choice(len(queries), n, replace=False))]
        labels = labels.loc[is_in(labels[QUERY_ID], queries[QUERY_ID])]
    return queries.reset_index(drop=True), labels


def build_task_set(
    shop: Shop,
    *,
    task: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    config: FeatureConfig,
    step_days: int = 14,
    max_queries_per_cutoff: int | None = None,
    seed: int = 0,
    snapshots: dict[pd.Timestamp, FeatureSnapshot] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TaskSet:
    """Build the labelled candidate set of ``task`` for queries with ``as_of`` in ``[start, end)``
    (:func:`build_task_sets` for one task, in this process).

    Raises:
        ValueError: No labelled query in the range.
    """
    sets = build_task_sets(
        shop,
        tasks=(task,),
        start=start,
        end=end,
        config=config,
        step_days=step_days,
        max_queries_per_cutoff=max_queries_per_cutoff,
        seed=seed,
        snapshots=snapshots,
        progress=progress,
    )
    if task not in sets:
        raise ValueError(f"{task}: no labelled queries between {start} and {end}")
    return sets[task]


def build_task_sets(
    shop: Shop,
    *,
    tasks: tuple[str, ...],
    start: pd.Timestamp,
    end: pd.Timestamp,
    config: FeatureConfig,
    step_days: int = 14,
    max_queries_per_cutoff: int | None = None,
    seed: int = 0,
    snapshots: dict[pd.Timestamp, FeatureSnapshot] | None = None,
    progress: Callable[[str], None] | None = None,
    workers: int = 1,
) -> dict[str, TaskSet]:
    """The labelled candidate sets of ``tasks`` for queries with ``as_of`` in ``[start, end)``.

    One unit of work per rolling cut-off: its snapshot, then every task's queries of that step
    scored against it, so the snapshot is built once and dropped after its step. With
    ``workers > 1`` the cut-offs run in that many processes (joblib); the sets are the same
    (each cut-off samples its queries with its own seed, whatever process runs it).

    Args:
        shop: The validated shop.
        tasks: Registered task names.
        start: First cut-off (inclusive).
        end: End of the query range (exclusive).
        config: Candidate sizes and windows.
        step_days: Days between rolling cut-offs.
        max_queries_per_cutoff: Sample at most this many queries per task and cut-off (None:
            all).
        seed: Seed of that sample.
        snapshots: Snapshots by cut-off to use instead of building them (None: each cut-off's
            built and dropped after its step).
        progress: Called with a short message per cut-off.
        workers: Processes building cut-offs.

    Returns:
        Task name -> set, for the tasks with at least one labelled query.
    """
    steps = [
        Step(lo, hi, max_queries_per_cutoff)
        for lo, hi in itertools.pairwise(cutoffs(start, end, step_days))
    ]
    done = build_steps(
        shop,
        tasks=tasks,
        steps=steps,
        config=config,
        seed=seed,
        snapshots=snapshots,
        progress=progress,
        workers=workers,
    )
    return join_steps(tasks, done)


@dataclass(frozen=True)
class Step:
    """One unit of work of a set build: queries with ``as_of`` in ``[start, end)`` against the
    snapshot at ``start``, at most ``max_queries`` per task (None: all); ``keep_snapshot``:
    that snapshot is returned too (:func:`build_steps`' ``kept``)."""

    start: pd.Timestamp
    end: pd.Timestamp
    max_queries: int | None
    keep_snapshot: bool = False


def build_steps(
    shop: Shop,
    *,
    tasks: tuple[str, ...],
    steps: list[Step],
    config: FeatureConfig,
    seed: int = 0,
    snapshots: dict[pd.Timestamp, FeatureSnapshot] | None = None,
    progress: Callable[[str], None] | None = None,
    workers: int = 1,
    kept: dict[pd.Timestamp, FeatureSnapshot] | None = None,
) -> list[dict[str, list[Part]]]:
    """Every task's parts of each of ``steps``, in their order (:func:`build_task_sets`; the
    steps may come from several windows, so one pool of ``workers`` processes runs them all).

    ``snapshots``: by cut-off, used by the step at that cut-off instead of building one (sent
    to its process). ``kept``: filled with the snapshots of the steps marked ``keep_snapshot``
    (by cut-off; a step without any query builds none)."""
    for task in tasks:
        get_task(task)  # a clear error for an unknown task before any work
    given = snapshots or {}
    job = functools.partial(_cutoff_parts, shop, tasks, config=config, seed=seed)

    def args(st: Step) -> dict[str, Any]:
        snap = given.get(st.start)
        keep = st.keep_snapshot and snap is None
        return {"max_queries": st.max_queries, "snapshot": snap, "keep": keep}

    if workers > 1 and len(steps) > 1:
        runner = joblib.Parallel(n_jobs=min(workers, len(steps)), return_as="generator")
        done = runner(joblib.delayed(job)(st.start, st.end, **args(st)) for st in steps)
    else:
        done = (job(st.start, st.end, **args(st)) for st in steps)
    out = []
    for st, (parts, built) in zip(steps, done, strict=True):
        snap = built if built is not None else given.get(st.start)
        if st.keep_snapshot and kept is not None and snap is not None:
            kept[st.start] = snap
        if progress is not None:
            sizes = ", ".join(
                f"{t} {sum(len(p.queries) for p in ps):,d}" for t, ps in parts.items()
            )
            progress(f"cut-off {st.start.date()} ({sizes or 'no queries'})")
        out.append(parts)
    return out


def join_steps(tasks: tuple[str, ...], done: list[dict[str, list[Part]]]) -> dict[str, TaskSet]:
    """Task -> the set of the steps' parts, for the tasks with at least one labelled query (the
    parts' rows are consumed)."""
    per_task: dict[str, list[Part]] = {task: [] for task in tasks}
    for parts in done:
        for task, task_parts in parts.items():
            per_task[task].extend(task_parts)
    return {
        task: concat_parts(task, parts, consume=True) for task, parts in per_task.items() if parts
    }


@dataclass(frozen=True)
class Part:
    """One chunk of queries of one task: its rows (:class:`TaskSet` columns) and query table."""

    rows: dict[str, np.ndarray]
    queries: pd.DataFrame
    columns: list[str]
    sources: tuple[str, ...]


def cutoff_queries(
    shop: Shop,
    task: str,
    lo: pd.Timestamp,
    hi: pd.Timestamp,
    *,
    config: FeatureConfig,
    max_queries: int | None,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sampled queries of ``task`` with ``as_of`` in ``[lo, hi)`` and their labels (the
    cut-off's own seed, so the sample does not depend on which process or engine draws it)."""
    lq = get_task(task).training_queries(shop, start=lo, end=hi, config=config)
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), lo.value])
    return sample_queries(lq, max_queries, rng)


def queries_part(
    task: str, queries: pd.DataFrame, labels: pd.DataFrame, snap: FeatureSnapshot
) -> Part:
    """Candidates, features and labels of some queries of ``task`` against ``snap`` (one unit
    of work of either engine; ``labels`` holds at least these queries' labels)."""
    batch = batch_from_frame(queries, snap, task=task)
    fm = build_features(batch, snap)
    y, rebuy = label_matrix(fm.query, fm.product, batch.query_ids, snap, labels)
    rows = {
        "X": fm.X,
        "label": y,
        "rebuy": rebuy,
        "allowed": allowed(batch, snap, fm),
        "query_id": batch.query_ids[fm.query],
        "product_id": snap.product_ids[fm.product],
        "best_source": fm.best_source,
        "reason_product": np.where(
            fm.reason_product >= 0,
            snap.product_ids[np.maximum(fm.reason_product, 0)],
            "",
        ),
    }
    n_pos = labels.groupby(QUERY_ID).size()
    n_rebuy = labels.loc[labels[REBUY].to_numpy(dtype=bool)].groupby(QUERY_ID).size()
    meta = _query_meta(queries, batch.customer, snap, fm, y, rebuy, (n_pos, n_rebuy))
    return Part(rows, meta, feature_columns(snap, task), fm.sources)


def _cutoff_parts(
    shop: Shop,
    tasks: tuple[str, ...],
    lo: pd.Timestamp,
    hi: pd.Timestamp,
    *,
    config: FeatureConfig,
    max_queries: int | None,
    seed: int,
    snapshot: FeatureSnapshot | None = None,
    keep: bool = False,
) -> tuple[dict[str, list[Part]], FeatureSnapshot | None]:
    """Every task's parts for the queries in ``[lo, hi)``, scored against ``snapshot`` (else
    the snapshot at ``lo``, built only if some task has queries there), and the snapshot built
    if ``keep``."""
    out: dict[str, list[Part]] = {}
    snap, built = snapshot, None
    for task in tasks:
        queries, labels = cutoff_queries(
            shop, task, lo, hi, config=config, max_queries=max_queries, seed=seed
        )
        if len(queries) == 0:
            continue
        if snap is None:
            snap = built = build_snapshot(shop, as_of=lo, config=config)
        out[task] = [
            queries_part(task, queries.iloc[c0 : c0 + CHUNK_QUERIES], labels, snap)
            for c0 in range(0, len(queries), CHUNK_QUERIES)
        ]
    return out, built if keep else None


def concat_parts(task: str, parts: list[Part], *, consume: bool = False) -> TaskSet:
    """One :class:`TaskSet` from parts of ``task`` (rows in the parts' order).

    ``consume``: the parts' rows are dropped as they are copied, so the memory of the set is
    held about once while it is built, not twice (the parts and the set)."""
    total = sum(len(p.rows["label"]) for p in parts)

    def stacked(name: str) -> np.ndarray:
        blocks = [p.rows[name] for p in parts]
        out = np.empty((total, *blocks[0].shape[1:]), dtype=np.result_type(*blocks))
        del blocks
        at = 0
        for p in parts:
            block = p.rows.pop(name) if consume else p.rows[name]
            out[at : at + len(block)] = block
            at += len(block)
        return out

    return TaskSet(
        task=task,
        X=stacked("X"),
        columns=parts[-1].columns,
        label=stacked("label"),
        rebuy=stacked("rebuy"),
        allowed=stacked("allowed"),
        query_id=stacked("query_id"),
        product_id=stacked("product_id"),
        best_source=stacked("best_source"),
        reason_product=stacked("reason_product"),
        queries=pd.concat([p.queries for p in parts], ignore_index=True),
        sources=parts[-1].sources,
    )


MIN_MERGE_POSITIVES = 20  # fewer positives in the calibration window: plain best-rank merge


def calibrate_merge_weights(
    shop: Shop,
    *,
    task: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    config: FeatureConfig,
    snapshots: dict[pd.Timestamp, FeatureSnapshot] | None = None,
    max_queries: int = 2000,
    seed: int = 0,
) -> dict[str, tuple[float, ...]]:
    """Learn the candidate merge on the queries of ``[start, end)`` (snapshot at ``start``).

    Every source's eligible top ``per_source`` is pooled; a logistic regression (scikit-learn)
    over one indicator per (source, :func:`features.candidates.rank_band`) predicts which
    pooled candidates are positives. Its coefficients, made non-increasing along the bands (a
    worse rank is never worth more), are the ``merge_weights`` :func:`merge_candidates` sums.

    Returns:
        Source -> weight per rank band (empty when the window has fewer than
        ``MIN_MERGE_POSITIVES`` positives in the pool: the merge then uses plain best rank).
    """
    lq = get_task(task).training_queries(shop, start=start, end=end, config=config)
    queries, labels = sample_queries(lq, max_queries, np.random.default_rng(seed))
    if len(queries) == 0:
        return {}
    cache = snapshots if snapshots is not None else {}
    if start not in cache:
        cache[start] = build_snapshot(shop, as_of=start, config=config)
    snap = cache[start]
    plain = dataclasses.replace(snap, config=snap.config.model_copy(update={"merge_weights": {}}))
    batch = batch_from_frame(queries, plain, task=task)
    sets = candidate_sets(batch, plain)
    pool = merge_candidates(
        batch, plain, sets, per_source=config.per_source, budget=len(sets) * config.per_source
    )
    y = label_matrix(pool.query, pool.product, batch.query_ids, snap, labels)[0]
    if y.sum() < MIN_MERGE_POSITIVES or y.sum() == len(y):
        return {}
    present = ~np.isnan(pool.ranks)
    row, src = np.nonzero(present)
    col = src * RANK_BANDS + rank_band(pool.ranks[row, src])
    X = sp.csr_matrix(
        (np.ones(len(row)), (row, col)), shape=(len(pool), len(pool.sources) * RANK_BANDS)
    )
    fit = LogisticRegression(C=1.0, max_iter=1000).fit(X, y)
    coef = fit.coef_.reshape(len(pool.sources), RANK_BANDS)
    seen = np.zeros_like(coef, dtype=bool)
    seen.reshape(-1)[np.unique(col)] = True
    out = {}
    for i, name in enumerate(pool.sources):
        if not seen[i].any():
            continue  # the source proposed nothing eligible: it only breaks ties
        w = np.minimum.accumulate(np.where(seen[i], coef[i], np.inf))
        w = np.where(np.isfinite(w), w, coef[i][seen[i]].min())
        out[name] = tuple(round(float(x), 6) for x in w)
    return out


def _query_meta(
    chunk: pd.DataFrame,
    customer: np.ndarray,
    snap: FeatureSnapshot,
    fm: FeatureMatrix,
    y: np.ndarray,
    rebuy: np.ndarray,
    positives: tuple[pd.Series, pd.Series],
) -> pd.DataFrame:
    n = len(chunk)
    n_pos, n_rebuy = positives
    found = np.bincount(fm.query, weights=y, minlength=n)
    meta = chunk[[QUERY_ID, s.CUSTOMER_ID, "as_of", "placement", "anchor_product_id"]].copy()
    meta = meta.reset_index(drop=True)
    meta["n_positives"] = meta[QUERY_ID].map(n_pos).fillna(0).astype(int).to_numpy()
    meta["n_positives_rebuy"] = meta[QUERY_ID].map(n_rebuy).fillna(0).astype(int).to_numpy()
    meta["n_found"] = found.astype(int)
    meta["n_found_rebuy"] = np.bincount(fm.query, weights=rebuy, minlength=n).astype(int)
    known = customer >= 0
    n_orders = np.where(known, snap.customers.n_orders[np.maximum(customer, 0)], 0)
    meta["is_new_customer"] = n_orders == 0
    seg = snap.segment_of(customer)
    levels = np.asarray([*snap.segment_levels, "unknown"], dtype=object)
    meta["segment"] = levels[np.where(seg >= 0, seg, len(snap.segment_levels))]
    present = ~np.isnan(fm_ranks(fm))
    for j, name in enumerate(fm.sources):
        meta[f"found_by_{name}"] = np.bincount(
            fm.query, weights=(present[:, j] & (y > 0)).astype(float), minlength=n
        ).astype(int)
    return meta


def fm_ranks(fm: FeatureMatrix) -> np.ndarray:
    """The ``(rows, sources)`` source-rank block of a feature matrix."""
    idx = [fm.columns.index(source_columns(name)[1]) for name in fm.sources]
    return fm.X[:, idx].astype(np.float64)

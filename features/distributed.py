"""The Dask engine's feature side: the same snapshot and training sets, computed on a cluster.

* The purchases are written as Parquet partitioned by customer (each customer's lines, hence
  each order and each customer's order sequence, inside one partition: :func:`customer_bucket`).
* Basket co-occurrence counts (product, category and family pairs: the snapshot tables that
  grow with the square of basket size) are a distributed group-by: every partition counts its
  own baskets, ``groupby(["a", "b"]).sum()`` adds them up (:class:`DaskBasketCounter`); lift,
  pruning and the rest of the snapshot are the local code on the summed counts.
* Training-set parts are tasks on the workers: each cut-off's snapshot is scattered once and
  every (task, customer bucket) of its sampled queries is one :func:`features.pipeline.queries_part`,
  so every query's rows sit inside one part (what ``lightgbm.dask`` needs of a query group).

The queries and their labels are drawn on the client with the local engine's seeds, so both
engines build the same candidates and features (a test holds them equal).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import scipy.sparse as sp
from distributed import Client, Future

from features.batch import QUERY_ID
from features.config import FeatureConfig
from features.cooccurrence import BasketCounts, basket_counts
from features.data import schema as s
from features.data.io import Shop
from features.pipeline import Part, TaskSet, concat_parts, cutoff_queries, cutoffs, queries_part
from features.snapshot import Lines, build_snapshot, count_baskets, to_days
from features.tasks import get_task

log = logging.getLogger(__name__)

BUCKET = "bucket"
PURCHASE_COLUMNS = [s.CUSTOMER_ID, s.ORDER_ID, s.PRODUCT_ID, s.TS, s.QUANTITY]
# one partial count per row of a partition's output; item totals and the basket count ride in
# the same frame (b = ITEM_ROW: the item's baskets; a = b = ITEM_ROW: the number of baskets)
ITEM_ROW = -1


def customer_bucket(customer_ids: pd.Series | np.ndarray, n_buckets: int) -> np.ndarray:
    """A stable bucket in ``[0, n_buckets)`` per customer id (the same in every process)."""
    ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str).to_numpy()
    return (pd.util.hash_array(ids) % np.uint64(n_buckets)).astype(np.int64)


def partition_purchases(shop: Shop, folder: str | Path, n_partitions: int) -> dd.DataFrame:
    """Write the shop's purchases under ``folder`` as Parquet, customers hashed into
    ``n_partitions`` buckets, one bucket per file; return the Dask frame reading them."""
    frame = shop.purchases[PURCHASE_COLUMNS].copy()
    for col in (s.CUSTOMER_ID, s.ORDER_ID, s.PRODUCT_ID):
        frame[col] = frame[col].astype(str)
    frame[BUCKET] = customer_bucket(frame[s.CUSTOMER_ID], n_partitions)
    frame = frame.set_index(BUCKET).sort_index()
    n = max(1, min(n_partitions, frame.index.nunique()))
    dd.from_pandas(frame, npartitions=n, sort=True).to_parquet(
        Path(folder), write_index=True, overwrite=True
    )
    return dd.read_parquet(Path(folder), calculate_divisions=True)


def _partition_counts(
    part: pd.DataFrame,
    *,
    product_ids: np.ndarray,
    item_of_product: np.ndarray,
    n_items: int,
    now: float,
    history_days: int | None,
) -> pd.DataFrame:
    """One partition's basket counts as ``(a, b, n)`` rows: the lines a snapshot at day ``now``
    counts (before it, positive quantity, inside the history window)."""
    day = np.asarray(to_days(part[s.TS]), dtype=np.float64)
    keep = (day < now) & (part[s.QUANTITY].to_numpy(dtype=np.float64) > 0)
    if history_days is not None:
        keep &= day >= now - history_days
    product = pd.Index(product_ids).get_indexer(part[s.PRODUCT_ID].to_numpy()[keep])
    order = pd.factorize(part[s.ORDER_ID].to_numpy()[keep])[0]
    counts = basket_counts(order, item_of_product[product], n_items)
    pairs = counts.pairs.tocoo()
    hit = np.flatnonzero(counts.items)
    return pd.DataFrame(
        {
            "a": np.concatenate([pairs.row, hit, [ITEM_ROW]]).astype(np.int64),
            "b": np.concatenate([pairs.col, np.full(len(hit), ITEM_ROW), [ITEM_ROW]]).astype(
                np.int64
            ),
            "n": np.concatenate([pairs.data, counts.items[hit], [counts.baskets]]).astype(
                np.float64
            ),
        }
    )


@dataclass
class DaskBasketCounter:
    """A :data:`features.snapshot.BasketCounter` that counts on the cluster.

    Attributes:
        purchases: The partitioned purchases (:func:`partition_purchases`), ideally persisted.
        product_ids: The catalog's product ids in snapshot order (sorted).
        history_days: The snapshot's history window (``FeatureConfig.history_days``).
        split_out: Output partitions of the group-by (more for catalogs with many pairs).
    """

    purchases: dd.DataFrame
    product_ids: np.ndarray
    history_days: int | None
    split_out: int = 1

    def __call__(self, lines: Lines, item_of_product: np.ndarray, n_items: int) -> BasketCounts:
        partial = self.purchases.map_partitions(
            _partition_counts,
            product_ids=self.product_ids,
            item_of_product=np.asarray(item_of_product, dtype=np.int64),
            n_items=n_items,
            now=lines.now,
            history_days=self.history_days,
            meta={"a": "int64", "b": "int64", "n": "float64"},
        )
        summed = partial.groupby(["a", "b"]).n.sum(split_out=self.split_out).compute()
        a = summed.index.get_level_values("a").to_numpy()
        b = summed.index.get_level_values("b").to_numpy()
        n = summed.to_numpy(dtype=np.float64)
        pair = (a >= 0) & (b >= 0)
        item = (a >= 0) & (b == ITEM_ROW)
        items = np.zeros(n_items)
        items[a[item]] = n[item]
        pairs = sp.csr_matrix((n[pair], (a[pair], b[pair])), shape=(n_items, n_items))
        baskets = int(n[(a == ITEM_ROW) & (b == ITEM_ROW)].sum())
        return BasketCounts(pairs, items, baskets)


@dataclass
class DistributedSet:
    """A task's training set held on the cluster, one future per part.

    Attributes:
        task: The task.
        parts: Futures of :class:`features.pipeline.Part` (each inside one worker's memory).
        rows: Rows per part.
        columns: Feature names.
        sources: Source names of the task.
        queries: One row per query (the parts' query tables, gathered: small).
    """

    task: str
    parts: list[Future]
    rows: list[int]
    columns: list[str]
    sources: tuple[str, ...]
    queries: pd.DataFrame

    def __len__(self) -> int:
        return sum(self.rows)

    def gather(self, client: Client, parts: list[int] | None = None) -> TaskSet:
        """The whole set (or the chosen parts) as a local :class:`TaskSet`."""
        chosen = self.parts if parts is None else [self.parts[i] for i in parts]
        return concat_parts(self.task, client.gather(chosen))


def _summary(part: Part) -> tuple[pd.DataFrame, int, list[str], tuple[str, ...]]:
    return part.queries, len(part.rows["label"]), part.columns, part.sources


def distributed_task_sets(
    client: Client,
    shop: Shop,
    *,
    tasks: tuple[str, ...],
    start: pd.Timestamp,
    end: pd.Timestamp,
    config: FeatureConfig,
    step_days: int,
    max_queries_per_cutoff: int | None,
    seed: int,
    buckets: int,
    counter: DaskBasketCounter | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, DistributedSet]:
    """:func:`features.pipeline.build_task_sets` on a Dask cluster: the same queries, snapshots
    and rows, each (cut-off, task, customer bucket) one task on the workers.

    Args:
        client: The cluster's client.
        buckets: Customer buckets per cut-off (parts per task and cut-off, at most).
        counter: Counts the snapshots' baskets on the cluster (None: on the client).
        progress: Called with a short message per cut-off, once its parts are submitted.

    Returns:
        Task name -> set on the cluster, for the tasks with at least one labelled query.
    """
    for task in tasks:
        get_task(task)
    futures: dict[str, list[Future]] = {task: [] for task in tasks}
    for lo, hi in itertools.pairwise(cutoffs(start, end, step_days)):
        sampled = {
            task: cutoff_queries(
                shop, task, lo, hi, config=config, max_queries=max_queries_per_cutoff, seed=seed
            )
            for task in tasks
        }
        sampled = {task: ql for task, ql in sampled.items() if len(ql[0])}
        if not sampled:
            continue
        snap = build_snapshot(shop, as_of=lo, config=config, counter=counter or count_baskets)
        remote = client.scatter(snap, hash=False)
        del snap
        for task, (queries, labels) in sampled.items():
            bucket = customer_bucket(queries[s.CUSTOMER_ID], buckets)
            label_bucket = pd.Series(bucket, index=queries[QUERY_ID].to_numpy()).reindex(
                labels[QUERY_ID].to_numpy()
            )
            for k in np.unique(bucket):
                futures[task].append(
                    client.submit(
                        queries_part,
                        task,
                        queries.loc[bucket == k],
                        labels.loc[label_bucket.to_numpy() == k],
                        remote,
                        pure=False,
                    )
                )
        if progress is not None:
            sizes = ", ".join(f"{t} {len(q):,d}" for t, (q, _) in sampled.items())
            progress(f"cut-off {lo.date()} ({sizes})")
    out = {}
    for task, parts in futures.items():
        if not parts:
            continue
        summaries: list[Any] = client.gather([client.submit(_summary, p) for p in parts])
        out[task] = DistributedSet(
            task=task,
            parts=parts,
            rows=[n for _, n, _, _ in summaries],
            columns=summaries[-1][2],
            sources=summaries[-1][3],
            queries=pd.concat([q for q, _, _, _ in summaries], ignore_index=True),
        )
    return out

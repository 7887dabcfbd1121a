"""The Dask engine on a real ``LocalCluster`` of 2 worker processes: the same basket counts,
candidates and features as the local engine, and a Dask-fitted ranker of comparable quality."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from feature_shop import CONFIG, CUTOFF, WINDOW

from features.data.io import Shop
from features.distributed import DaskBasketCounter, distributed_task_sets, partition_purchases
from features.pipeline import TaskSet, build_task_sets
from features.snapshot import build_snapshot
from features.tasks import task_names
from training.config import DaskConfig, RankerConfig, TrainConfig
from training.engines import DaskEngine, LocalEngine, Window
from training.metrics import ndcg_at_k

KWARGS = dict(
    tasks=task_names(),
    start=CUTOFF - WINDOW,
    end=CUTOFF + WINDOW,
    config=CONFIG,
    step_days=WINDOW.days,
    max_queries_per_cutoff=60,
    seed=3,
)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def counter(
    shop: Shop, client: Client, tmp_path_factory: pytest.TempPathFactory
) -> DaskBasketCounter:
    folder = tmp_path_factory.mktemp("parts")
    purchases = partition_purchases(shop, folder, 4).persist()
    assert purchases.npartitions == 4
    assert len(list(Path(folder).glob("*.parquet"))) == 4
    ids = build_snapshot(shop, as_of=CUTOFF, config=CONFIG).product_ids
    return DaskBasketCounter(purchases, ids, CONFIG.history_days)


def _sorted(ts: TaskSet) -> np.ndarray:
    return np.lexsort((ts.product_id.astype(str), ts.query_id.astype(str)))


def test_partitions_hold_whole_customers(shop: Shop, counter: DaskBasketCounter) -> None:
    per = counter.purchases.map_partitions(lambda p: p[["customer_id"]].drop_duplicates()).compute()
    assert per["customer_id"].is_unique  # no customer in two partitions
    assert set(per["customer_id"]) == set(shop.purchases["customer_id"].astype(str))


def test_cluster_counts_give_the_same_snapshot_tables(
    shop: Shop, counter: DaskBasketCounter
) -> None:
    local = build_snapshot(shop, as_of=CUTOFF, config=CONFIG)
    dask = build_snapshot(shop, as_of=CUTOFF, config=CONFIG, counter=counter)
    for name in ("cooc", "cooc_conf", "category_assoc", "family_assoc"):
        a, b = getattr(local.pairs, name).matrix, getattr(dask.pairs, name).matrix
        assert a.nnz > 0, name
        assert a.nnz == b.nnz, name
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12)


def test_cluster_sets_equal_local_sets(
    shop: Shop, client: Client, counter: DaskBasketCounter
) -> None:
    local = build_task_sets(shop, **KWARGS)  # type: ignore[arg-type]
    dist = distributed_task_sets(client, shop, buckets=3, counter=counter, **KWARGS)  # type: ignore[arg-type]
    assert set(local) == set(dist) == set(task_names())
    for task, ts in local.items():
        ds = dist[task]
        assert len(ds.parts) > 2  # two cut-offs, several customer buckets
        other = ds.gather(client)
        assert len(ds) == len(ts) == len(other)
        i, j = _sorted(ts), _sorted(other)
        np.testing.assert_array_equal(ts.query_id[i], other.query_id[j])
        np.testing.assert_array_equal(ts.product_id[i], other.product_id[j])
        np.testing.assert_array_equal(ts.X[i], other.X[j])
        np.testing.assert_array_equal(ts.label[i], other.label[j])
        # every query's rows inside one part (what lightgbm.dask needs of a query group)
        owners: dict[str, int] = {}
        for k, part in enumerate(client.gather(ds.parts)):
            for q in set(part.rows["query_id"].tolist()):
                assert owners.setdefault(q, k) == k, q


def _mean_ndcg(booster: object, ts: TaskSet) -> float:
    scores = booster.predict(ts.X, num_threads=1)  # type: ignore[attr-defined]
    # the positives among the candidates (both rankers order the same rows)
    query = pd.factorize(ts.query_id)[0]
    n_pos = np.bincount(query, weights=ts.label).astype(np.int64)
    return ndcg_at_k(query, scores, ts.label, n_pos, 10)


def test_dask_ranker_is_comparable_to_the_local_one(
    shop: Shop, client: Client, tmp_path: Path
) -> None:
    cfg = TrainConfig(
        ranker=RankerConfig(max_rounds=60, num_threads=1), dask=DaskConfig(workers=2, buckets=3)
    )
    windows = [
        Window("fit", CUTOFF - 2 * WINDOW, CUTOFF),
        Window("validation", CUTOFF, CUTOFF + WINDOW),
    ]
    engine = DaskEngine(client=client, config=cfg.dask, folder=str(tmp_path))
    from training.progress import Progress

    sets = engine.task_sets(
        shop, tasks=("cross_sell",), config=cfg, windows=windows, say=Progress.of(None)
    )
    pair = sets["cross_sell"]
    booster = engine.fit(pair["fit"], pair["validation"], categorical=[], config=cfg)
    local_sets = LocalEngine().task_sets(
        shop, tasks=("cross_sell",), config=cfg, windows=windows, say=Progress.of(None)
    )
    local = LocalEngine().fit(
        local_sets["cross_sell"]["fit"],
        local_sets["cross_sell"]["validation"],
        categorical=[],
        config=cfg,
    )
    valid = local_sets["cross_sell"]["validation"]
    assert booster.num_trees() >= 1
    assert booster.feature_name() == valid.columns
    dask_ndcg, local_ndcg = _mean_ndcg(booster, valid), _mean_ndcg(local, valid)
    assert dask_ndcg > 0
    # measured: 0.112-0.131 vs 0.150 (x0.75-0.87 over five runs; x0.69 once with one more
    # candidate source) on this 800-customer shop: the trees come from an early-stopped run on
    # a quarter of the parts, data-parallel trees differ from one machine's, and which worker
    # holds which parts changes from run to run; the bound says "comparable", not equal
    assert dask_ndcg >= 0.6 * local_ndcg, (dask_ndcg, local_ndcg)

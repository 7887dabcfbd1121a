"""Candidate recall against the candidate budget, per source and merged, with the time it costs.

    python -m benchmarks.candidates --data DIR [--task cross_sell] [--cutoff DATE]
        [--days 14] [--budgets 50 100 200] [--max-queries 3000]

Builds the snapshot at the cut-off (default: 42 days before the last purchase) and the task's
holdout queries of the following ``--days``, runs every source once, and reports the share of
positives reached (new-to-customer items for cross_sell) at each budget: each source alone
(its top N); merged by plain best rank (each source's top N/2, N kept), for all sources and for
the sources that existed before the candidate-recall issue (``cooc``, ``sequential``,
``coview``, ``cocart``, ``category_assoc``, ``segment_popular``, ``trending``); and merged by
the learned merge (:func:`features.pipeline.calibrate_merge_weights`, fitted on the window
before the cut-off as ``xsell train`` does) over each source's top N/2 (the default: 50 for
100) and top N. Prints the seconds each source takes per 1,000 queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.batch import QUERY_ID, batch_from_frame
from features.candidates import check_point_in_time, merge_candidates
from features.config import FeatureConfig
from features.data import schema as s
from features.data.io import load_shop
from features.pipeline import calibrate_merge_weights
from features.snapshot import build_snapshot
from features.sources import sources_for
from features.tasks import get_task

EARLIER_SOURCES = (
    "cooc",
    "sequential",
    "coview",
    "cocart",
    "category_assoc",
    "segment_popular",
    "trending",
)


def recall(
    cands_query: np.ndarray, cands_product: np.ndarray, positives: set[tuple[int, int]], total: int
) -> float:
    """Share of the positives among the candidate pairs."""
    found = sum(
        (int(q), int(p)) in positives for q, p in zip(cands_query, cands_product, strict=True)
    )
    return found / max(total, 1)


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--task", default=s.CROSS_SELL)
    parser.add_argument("--cutoff", default=None)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--max-queries", type=int, default=3000)
    args = parser.parse_args()
    shop = load_shop(args.data)
    last = shop.time_range()[1].normalize()
    cutoff = pd.Timestamp(args.cutoff) if args.cutoff else last - pd.Timedelta(days=42)
    cfg = FeatureConfig(per_source=max(args.budgets))  # every source can fill the largest budget
    t0 = time.perf_counter()
    snap = build_snapshot(shop, as_of=cutoff, config=cfg)
    print(f"snapshot at {cutoff.date()}: {time.perf_counter() - t0:.1f} s")
    lq = get_task(args.task).training_queries(
        shop, start=cutoff, end=cutoff + pd.Timedelta(days=args.days), config=cfg
    )
    queries = lq.queries
    if len(queries) > args.max_queries:
        queries = queries.sample(args.max_queries, random_state=0).sort_values("as_of")
    labels = lq.labels.loc[lq.labels[QUERY_ID].isin(queries[QUERY_ID])]
    batch = batch_from_frame(queries.reset_index(drop=True), snap, task=args.task)
    check_point_in_time(batch, snap)
    qpos = {qid: i for i, qid in enumerate(batch.query_ids.tolist())}
    positives = {
        (qpos[qid], snap.product_index[pid])
        for qid, pid in zip(labels[QUERY_ID], labels[s.PRODUCT_ID], strict=True)
        if pid in snap.product_index
    }
    total = len(labels)
    print(f"{len(batch):,d} {args.task} queries, {total:,d} positives")
    sets, seconds = [], {}
    for src in sources_for(args.task):
        t0 = time.perf_counter()
        sets.append(src.build(batch, snap))
        seconds[src.name] = (time.perf_counter() - t0) / len(batch) * 1000
    calib_start = cutoff - pd.Timedelta(days=2 * args.days)
    learned = {}
    for pool in sorted({max(b // 2, 1) for b in args.budgets} | set(args.budgets)):
        t0 = time.perf_counter()
        learned[pool] = calibrate_merge_weights(
            shop,
            task=args.task,
            start=calib_start,
            end=calib_start + pd.Timedelta(days=args.days),
            config=FeatureConfig(per_source=pool),
        )
        print(f"merge learned with a pool of {pool} per source: {time.perf_counter() - t0:.1f} s")
    rows = []
    for budget in args.budgets:
        row: dict[str, object] = {"budget": budget}
        for cs in sets:
            alone = merge_candidates(batch, snap, [cs], per_source=budget, budget=budget)
            row[cs.source] = round(recall(alone.query, alone.product, positives, total), 4)
        half = max(budget // 2, 1)
        for name, subset in (
            ("merged (earlier sources)", [cs for cs in sets if cs.source in EARLIER_SOURCES]),
            ("merged (all)", sets),
        ):
            m = merge_candidates(batch, snap, subset, per_source=half, budget=budget)
            row[name] = round(recall(m.query, m.product, positives, total), 4)
        for label, pool in (("pool N/2: the default", half), ("pool N", budget)):
            weighted = dataclasses.replace(
                snap, config=snap.config.model_copy(update={"merge_weights": learned[pool]})
            )
            m = merge_candidates(batch, weighted, sets, per_source=pool, budget=budget)
            row[f"merged (all, learned, {label})"] = round(
                recall(m.query, m.product, positives, total), 4
            )
        rows.append(row)
    table = pd.DataFrame(rows).set_index("budget").T
    print(table.to_string())
    print("\nseconds per 1,000 queries:")
    for name, sec in seconds.items():
        print(f"  {name:<20} {sec:.2f}")


if __name__ == "__main__":
    main()

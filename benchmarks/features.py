"""Benchmark: training-set feature building and the single-query path on synthetic shops.

For each size (customers) a child process generates the shop (cached under --work), builds the
training set of every registered task exactly as ``xsell train`` does (rolling cut-offs of the
default config: fit + validation windows), and times the single-query path used by serving
(cross-sell at the cart, upsell on a product page, replenish at the cart).

    python -m benchmarks.features --sizes 10000 100000 1000000

(Run it as a module from the repository root: as a plain script its own name would shadow the
``features`` package.)

Prints, per size: queries, candidate rows, seconds, queries/s, candidates/s, peak RSS, and
single-query p50/p95 in ms with the mean number of candidates per query.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run_one(customers: int, work: Path, n_single: int) -> dict:
    """Generate (if needed), build the training set, time single queries. Runs in a child."""
    import pandas as pd

    from features.batch import single_query
    from features.data import schema as s
    from features.data.io import load_shop
    from features.data.synthetic import generate_shop
    from features.matrix import build_features
    from features.snapshot import build_snapshot, to_days
    from features.tasks import get_task, task_names
    from training.config import TrainConfig
    from training.train import fit_and_validation_sets, make_split

    shop_dir = work / f"shop-{customers}"
    if not (shop_dir / "purchases.parquet").exists():
        generate_shop(shop_dir, n_customers=customers, seed=1)
    shop = load_shop(shop_dir)
    cfg = TrainConfig()
    split = make_split(shop, cfg, None)
    t0 = time.perf_counter()
    n_queries = n_rows = 0
    built = fit_and_validation_sets(shop, tasks=task_names(), config=cfg, split=split)
    for sets in built.values():
        n_queries += sum(len(ts.queries) for ts in sets.values())
        n_rows += sum(len(ts) for ts in sets.values())
    build_s = time.perf_counter() - t0

    snap = build_snapshot(shop, as_of=split.train_until, config=cfg.features)
    rng = np.random.default_rng(0)
    custs = shop.customers[s.CUSTOMER_ID].to_numpy()
    recent = shop.purchases.loc[shop.purchases[s.TS] < split.train_until].tail(50_000)
    carts = recent.groupby(s.ORDER_ID)[s.PRODUCT_ID].agg(list).to_numpy()
    now = float(to_days(pd.Timestamp(split.train_until)))
    # One single query per task in turn, each at a placement that asks for it.
    plan = [
        (task, "product_page" if get_task(task).needs_anchor else "cart") for task in task_names()
    ]
    lat: dict[str, list[float]] = {task: [] for task in task_names()}
    sizes: dict[str, list[int]] = {task: [] for task in task_names()}
    for i in range(n_single):
        task, placement = plan[i % len(plan)]
        cart = carts[rng.integers(len(carts))]
        anchored = get_task(task).needs_anchor
        batch = single_query(
            snap,
            task=task,
            customer_id=str(custs[rng.integers(len(custs))]),
            placement=placement,
            anchor_product_id=cart[0] if anchored else None,
            cart_product_ids=[] if anchored else cart,
            as_of=now,
        )
        t = time.perf_counter()
        fm = build_features(batch, snap)
        lat[task].append((time.perf_counter() - t) * 1000)
        sizes[task].append(len(fm))
    return {
        "customers": customers,
        "order_lines": len(shop.purchases),
        "queries": n_queries,
        "rows": n_rows,
        "seconds": build_s,
        "single_p50_ms": float(np.percentile(lat[s.CROSS_SELL], 50)),
        "single_p95_ms": float(np.percentile(lat[s.CROSS_SELL], 95)),
        "single_candidates": float(np.mean(sizes[s.CROSS_SELL])),
        **{
            f"{task}_p50_ms": float(np.percentile(lat[task], 50))
            for task in task_names()
            if task != s.CROSS_SELL
        },
        **{
            f"{task}_candidates": float(np.mean(sizes[task]))
            for task in task_names()
            if task != s.CROSS_SELL
        },
    }


CHILD = "import sys; from benchmarks.features import main; sys.argv[0] = 'bench'; main()"


def main() -> None:
    """Run each size in a child process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--work", type=Path, default=None, help="Cache folder for shops")
    parser.add_argument("--single", type=int, default=600, help="Single queries to time")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.gettempdir()) / "xsell-bench"
    work.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        print(json.dumps(run_one(args.child, work, args.single)))
        return
    from features.data import schema as s
    from features.tasks import task_names

    others = [task for task in task_names() if task != s.CROSS_SELL]
    rows = []
    for size in args.sizes:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                "--child",
                str(size),
                "--work",
                str(work),
                "--single",
                str(args.single),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        out = proc.stdout.read() if proc.stdout else ""
        if status != 0:
            raise SystemExit(f"size {size} failed")
        row = json.loads(out.strip().splitlines()[-1])
        row["peak_rss_mb"] = usage.ru_maxrss / 1024
        rows.append(row)
        print(
            f"{row['customers']:>9,d} customers {row['order_lines']:>11,d} lines | "
            f"{row['queries']:>7,d} queries {row['rows']:>10,d} candidates in {row['seconds']:7.1f} s "
            f"= {row['queries'] / row['seconds']:8.0f} queries/s {row['rows'] / row['seconds']:10.0f} cand/s | "
            f"peak {row['peak_rss_mb']:7.0f} MB | single query p50 {row['single_p50_ms']:.2f} ms "
            f"p95 {row['single_p95_ms']:.2f} ms ({row['single_candidates']:.0f} cand)"
            + "".join(
                f", {task} p50 {row[f'{task}_p50_ms']:.2f} ms "
                f"({row[f'{task}_candidates']:.0f} cand)"
                for task in others
            ),
            flush=True,
        )
    if len(rows) > 1:
        base = rows[0]
        for row in rows[1:]:
            grow = row["order_lines"] / base["order_lines"]
            print(
                f"{row['customers']:,d} vs {base['customers']:,d}: data x{grow:.1f}, "
                f"time x{row['seconds'] / base['seconds']:.1f}, "
                f"memory x{row['peak_rss_mb'] / base['peak_rss_mb']:.1f}"
            )


if __name__ == "__main__":
    main()

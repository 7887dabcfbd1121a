"""Benchmark the live event store on SQLite: ingest, the per-request read, recommendations.

Fills a store with ``--events`` live events (about 20 per customer, in batches of
``--batch``, through ``add_events``), then times:

- ``add_events`` of one batch while the store fills (its last tenth) and on the full store;
- ``customer_events`` for a random customer with ~20 events (the per-request read), as the
  store runs it (raw SQL on the SQLite connection) and through SQLAlchemy Core (the path the
  store takes on PostgreSQL), to show what Core costs on the hot read;
- ``add_recommendation`` of a two-task answer with 10 items each, and ``recommendation()``
  (store path and Core path).

    python -m benchmarks.store --events 1000000 [--work /tmp/xsell-bench-store] [--uuid-ids]

The filled store is kept under ``--work`` and topped up to ``--events`` when reused
(``--fresh`` rebuilds it). Each line gives wall-clock p50 / p95 and the calling thread's CPU
time p50 (the wall figures include waiting for the CPU when other processes load the machine;
the CPU figure does not include waiting for the disk).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from online.records import LiveEvent, RecommendationRecord, RecommendedItem
from online.store import EventStore, _Sql

EVENTS_PER_CUSTOMER = 20
START = datetime(2025, 1, 1)
TYPES = ("view", "view", "view", "add_to_cart", "purchase", "remove_from_cart")


def make_batch(
    rng: np.random.Generator, first_id: int, size: int, n_customers: int, *, uuid_ids: bool
) -> list[LiveEvent]:
    """``size`` random events over a year; ids increase from ``first_id`` or are random."""
    customers = rng.integers(n_customers, size=size)
    products = rng.integers(5000, size=size)
    minutes = rng.integers(365 * 24 * 60, size=size)
    kinds = rng.integers(len(TYPES), size=size)
    batch = []
    for i in range(size):
        kind = TYPES[kinds[i]]
        purchase = kind == "purchase"
        event_id = (
            uuid.UUID(int=int(rng.integers(2**62)) << 64 | i).hex
            if uuid_ids
            else f"E{first_id + i:012d}"
        )
        batch.append(
            LiveEvent(
                event_id=event_id,
                event_type=kind,
                customer_id=f"C{customers[i]:08d}",
                product_id=f"P{products[i]:05d}",
                ts=START + timedelta(minutes=int(minutes[i])),
                order_id=f"O{first_id + i:012d}" if purchase else None,
                unit_price=9.99 if purchase else None,
                session_id=None if purchase else f"S{customers[i]:08d}",
            )
        )
    return batch


def recommendation(i: int, rng: np.random.Generator) -> RecommendationRecord:
    """A served answer: two tasks of 10 items."""
    items = tuple(
        RecommendedItem(task, pos, f"P{rng.integers(5000):05d}", float(rng.random()), 19.9)
        for task in ("cross_sell", "upsell")
        for pos in range(1, 11)
    )
    return RecommendationRecord(
        f"R{i:010d}", f"C{i:08d}", "cart", "treatment", "7", START + timedelta(seconds=i), items
    )


def timed(call: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (this thread) milliseconds of each of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        c, t = time.thread_time(), time.perf_counter()
        call()
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    return wall, cpu


def figures(wall: list[float], cpu: list[float]) -> str:
    """Wall p50 / p95 and CPU p50, in ms."""
    return (
        f"p50 {np.percentile(wall, 50):7.3f} ms  p95 {np.percentile(wall, 95):7.3f} ms  "
        f"(cpu p50 {np.percentile(cpu, 50):6.3f} ms)"
    )


def ingest(store: EventStore, args: argparse.Namespace, n_customers: int) -> None:
    """Top the store up to ``--events`` and time ``add_events`` on the full store."""
    have = store.counts()["events"]
    firsts = range(have, args.events, args.batch)
    rng = np.random.default_rng(have)
    batches = (
        make_batch(rng, f, min(args.batch, args.events - f), n_customers, uuid_ids=args.uuid_ids)
        for f in firsts
    )
    if firsts:
        t0 = time.perf_counter()
        wall, cpu = timed(lambda: store.add_events(next(batches)), len(firsts))
        total = time.perf_counter() - t0
        tail = max(1, len(wall) // 10)
        added = args.events - have
        print(f"fill: {added:,d} events in {total:.1f} s = {added / total:,.0f} events/s")
        print(f"add_events ({args.batch}), end of fill   {figures(wall[-tail:], cpu[-tail:])}")
    first = 10**11 + store.counts()["events"]  # ids no earlier run used
    extra = iter(
        [
            make_batch(rng, first + i * args.batch, args.batch, n_customers, uuid_ids=args.uuid_ids)
            for i in range(100)
        ]
    )
    stored: list[int] = []
    wall, cpu = timed(lambda: stored.append(store.add_events(next(extra))[0]), 100)
    assert sum(stored) == 100 * args.batch, "the timed batches must be new events"
    rate = args.batch / np.percentile(wall, 50) * 1000
    print(f"add_events ({args.batch}), full store    {figures(wall, cpu)}  = {rate:,.0f} events/s")


def paired(
    store_call: Callable[[Any], object], core_call: Callable[[Any], object], keys: list[Any]
) -> tuple[tuple[list[float], list[float]], tuple[list[float], list[float]]]:
    """Time the store's call and the Core call on each key, alternating which goes first
    (both see the same cache state)."""
    out: dict[int, tuple[list[float], list[float]]] = {0: ([], []), 1: ([], [])}
    calls = (store_call, core_call)
    for i, key in enumerate(keys):
        for which in (0, 1) if i % 2 else (1, 0):
            wall, cpu = timed(lambda: calls[which](key), 1)  # noqa: B023 (called at once)
            out[which][0].extend(wall)
            out[which][1].extend(cpu)
    return out[0], out[1]


def compare(label: str, store: EventStore, read: Any, params: list[dict[str, Any]]) -> None:
    """Print the rows-only time of ``read`` as raw SQL and through Core (same cache state)."""
    core = _Sql(read.statement)
    (wall, cpu), (core_wall, core_cpu) = paired(
        lambda p: store._fetch(read, p), lambda p: store._fetch(core, p), params
    )
    extra = np.percentile(core_wall, 50) - np.percentile(wall, 50)
    print(f"  {label} rows, raw SQL       {figures(wall, cpu)}")
    print(f"  {label} rows, Core          {figures(core_wall, core_cpu)}  (+{extra:.3f} ms)")


def reads(store: EventStore, args: argparse.Namespace, n_customers: int) -> None:
    """Time the per-request reads and recording an answer; compare raw SQL and Core."""
    rng = np.random.default_rng(1)
    after = START - timedelta(days=1)
    customers = [f"C{c:08d}" for c in rng.integers(n_customers, size=args.repeats)]
    sizes = [len(store.customer_events(c, after)) for c in customers[:200]]
    it = iter(customers)
    wall, cpu = timed(lambda: store.customer_events(next(it), after), args.repeats)
    print(f"customer_events                 {figures(wall, cpu)}  ({np.mean(sizes):.1f} events)")
    params = [{"customer_id": c, "after": after} for c in rng.permutation(customers)]
    compare("customer_events", store, store._customer_events, params)

    base = store.counts()["recommendations"]
    records = iter([recommendation(base + i, rng) for i in range(args.repeats)])
    wall, cpu = timed(lambda: store.add_recommendation(next(records)), args.repeats)
    print(f"add_recommendation (20 items)   {figures(wall, cpu)}")
    ids = [f"R{base + i:010d}" for i in rng.permutation(args.repeats)]
    it = iter(ids)
    wall, cpu = timed(lambda: store.recommendation(next(it)), args.repeats)
    print(f"recommendation()                {figures(wall, cpu)}")
    params = [{"recommendation_id": r} for r in rng.permutation(ids)]
    compare("recommendation ", store, store._recommendation, params)


def main() -> None:
    """Fill (or reuse) the store and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "xsell-bench-store"
    )
    parser.add_argument("--fresh", action="store_true", help="Rebuild the filled store")
    parser.add_argument(
        "--uuid-ids", action="store_true", help="Random event ids (default: increasing ids)"
    )
    args = parser.parse_args()
    folder = args.work / f"store-{args.events}{'-uuid' if args.uuid_ids else ''}"
    if args.fresh:
        shutil.rmtree(folder, ignore_errors=True)
    n_customers = max(1, args.events // EVENTS_PER_CUSTOMER)
    store = EventStore.open(folder)
    try:
        ingest(store, args, n_customers)
        reads(store, args, n_customers)
        print(f"rows: {store.counts()}")
    finally:
        store.close()


if __name__ == "__main__":
    main()

"""Benchmark the live loop of a real server: event ingest, its cost to ``/recommend``, and
restart durability.

Starts ``xsell serve`` (SQLite event store in a temporary folder) on a model trained on a
synthetic shop (cached, see :mod:`benchmarks.serving`) and measures, in one run:

1. ``/recommend`` alone at ``--concurrency``: p50 / p99 (the baseline of step 3);
2. ingest alone: batches of ``--batch`` events posted as fast as two clients can: events/s;
3. both at once: ingest paced at ``--rate`` events/s while the same ``/recommend`` load runs:
   its p99 against step 1's (target: at most +20%), and the ingest rate reached;
4. count in = count stored (every acknowledged event id is in the store);
5. kill -9 mid-ingest, restart on the same store: every acknowledged event is there.

The events are views, adds and purchases of the request mix's own customers, so the requests of
step 3 read live rows (the per-customer indexed read is on every request's path)::

    python -m benchmarks.events --customers 20000 [--requests 3000] [--rate 2000]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.serving import (
    free_port,
    request_mix,
    run_load,
    start_server,
    stop_server,
    trained_model,
    wait_ready,
)

TARGETS = {"ingest events/s": 2000.0, "recommend p99 rise under ingest": 0.20}


def event_batches(
    model_dir: Path, customers: list[str], n_batches: int, size: int, seed: int, prefix: str
) -> list[list[dict[str, Any]]]:
    """``n_batches`` batches of ``size`` events (60% views, 25% adds, 15% purchase lines) of
    ``customers`` on popularity-weighted products, with unique ids."""
    from features.snapshot import FeatureSnapshot

    snap = FeatureSnapshot.load(model_dir / "snapshot")
    rng = np.random.default_rng(seed)
    pop = snap.products.long_popularity + 1e-4
    products = rng.choice(snap.n_products, size=n_batches * size, p=pop / pop.sum())
    kinds = rng.choice(3, size=n_batches * size, p=[0.6, 0.25, 0.15])
    who = rng.integers(len(customers), size=n_batches * size)
    out = []
    for b in range(n_batches):
        batch = []
        for i in range(b * size, (b + 1) * size):
            event: dict[str, Any] = {
                "event_id": f"{prefix}-{i}",
                "event_type": ("view", "add_to_cart", "purchase")[kinds[i]],
                "customer_id": customers[who[i]],
                "product_id": str(snap.product_ids[products[i]]),
            }
            if kinds[i] == 2:
                event |= {"order_id": f"{prefix}-o{i // 4}", "unit_price": 4.99}
            batch.append(event)
        out.append(batch)
    return out


class Ingest:
    """Posts batches from a thread, optionally paced; records acknowledged ids and the rate."""

    def __init__(self, base: str, batches: list[list[dict[str, Any]]], rate: float | None) -> None:
        self.base, self.batches, self.rate = base, batches, rate
        self.acked: list[str] = []
        self.failed = 0
        self.seconds = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        with httpx.Client(base_url=self.base, timeout=30) as client:
            for i, batch in enumerate(self.batches):
                if self.stop.is_set():
                    break
                if self.rate:
                    due = started + i * len(batch) / self.rate
                    time.sleep(max(0.0, due - time.perf_counter()))
                try:
                    r = client.post("/events", json={"events": batch})
                except httpx.HTTPError:
                    self.failed += len(batch)
                    if self.stop.is_set():
                        break
                    continue
                if r.status_code == 200:
                    self.acked.extend(e["event_id"] for e in batch)
                else:
                    self.failed += len(batch)
        self.seconds = time.perf_counter() - started

    def __enter__(self) -> Ingest:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def per_second(self) -> float:
        return len(self.acked) / self.seconds if self.seconds else 0.0


def ingest_flat_out(base: str, batches: list[list[dict[str, Any]]], clients: int) -> Ingest:
    """Post every batch with ``clients`` threads, unpaced; a merged :class:`Ingest` record."""
    parts = [Ingest(base, batches[i::clients], None) for i in range(clients)]
    started = time.perf_counter()
    for p in parts:
        p.thread.start()
    for p in parts:
        p.thread.join()
    merged = Ingest(base, [], None)
    merged.acked = [e for p in parts for e in p.acked]
    merged.failed = sum(p.failed for p in parts)
    merged.seconds = time.perf_counter() - started
    return merged


def stored_ids(store: Path) -> set[str]:
    from online.store import EventStore

    events = EventStore.open(store, create=False).tables()["events"]
    return set(events["event_id"])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000, help="synthetic shop size")
    parser.add_argument("--model", type=Path, help="model folder (skips generating and training)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "xsell-serving")
    parser.add_argument("--requests", type=int, default=3000, help="/recommend requests per run")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500, help="events per POST /events")
    parser.add_argument("--rate", type=float, default=2000.0, help="paced ingest (events/s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or trained_model(args.customers, args.work, args.seed)
    bodies = request_mix(model_dir, args.requests, args.seed)
    customers = sorted({b["customer_id"] for b in bodies})
    with tempfile.TemporaryDirectory(prefix="xsell-bench-events-") as tmp:
        home = Path(tmp)
        store = home / "store"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(str(model_dir), port, 1, home, store=store)
        try:
            print(f"server ready in {wait_ready(base, proc):.1f} s; store {store}", flush=True)
            alone = run_load(base, "/recommend", bodies, args.concurrency, warmup=200)
            print(f"  1. /recommend alone: p50 {alone.p50_ms:.2f} ms, p99 {alone.p99_ms:.2f} ms")
            flat_batches = event_batches(model_dir, customers, 40, args.batch, args.seed, "flat")
            flat = ingest_flat_out(base, flat_batches, clients=2)
            print(
                f"  2. ingest alone: {flat.per_second:,.0f} events/s "
                f"({len(flat.acked):,d} acknowledged, {flat.failed} failed)"
            )
            seconds = alone.requests / max(alone.per_second, 1.0) + 5
            n = int(seconds * args.rate / args.batch) + 2
            paced_batches = event_batches(model_dir, customers, n, args.batch, args.seed + 1, "p")
            with Ingest(base, paced_batches, args.rate) as paced:
                both = run_load(base, "/recommend", bodies, args.concurrency, warmup=0)
            rise = both.p99_ms / alone.p99_ms - 1
            print(
                f"  3. with ingest paced at {args.rate:,.0f}/s (reached {paced.per_second:,.0f}/s): "
                f"/recommend p50 {both.p50_ms:.2f} ms, p99 {both.p99_ms:.2f} ms "
                f"({rise:+.0%} vs alone), 5xx {both.errors}"
            )
        finally:
            stop_server(proc)
        acked = set(flat.acked) | set(paced.acked)
        lost = len(acked - stored_ids(store))
        print(f"  4. acknowledged {len(acked):,d}, stored and found all but {lost}")

        # 5. kill -9 mid-ingest, restart, count
        proc = start_server(str(model_dir), port, 1, home, store=store)
        wait_ready(base, proc)
        kill_batches = event_batches(model_dir, customers, 400, args.batch, args.seed + 2, "k")
        with Ingest(base, kill_batches, None) as killed:
            while len(killed.acked) < 20 * args.batch and killed.thread.is_alive():
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc = start_server(str(model_dir), port, 1, home, store=store)
        try:
            wait_ready(base, proc)
            degraded = httpx.get(f"{base}/readyz").json()["degraded"]
        finally:
            stop_server(proc)
        missing = len(set(killed.acked) - stored_ids(store))
        print(
            f"  5. killed mid-ingest after {len(killed.acked):,d} acknowledged events; after the "
            f"restart {missing} missing; /readyz degraded: {degraded or 'nothing'}"
        )
    figures = {"ingest events/s": flat.per_second, "recommend p99 rise under ingest": rise}
    for name, value in figures.items():
        target = TARGETS[name]
        ok = value >= target if "events/s" in name else value <= target
        bound = ">=" if "events/s" in name else "<="
        print(f"  {name:<34} {value:>9.2f}   target {bound} {target:<6g} {'ok' if ok else 'MISS'}")
    if lost or missing:
        print(f"  LOSS: {lost} events after a clean run, {missing} after the kill")


if __name__ == "__main__":
    main()

"""Benchmark the prediction API: latency, throughput and memory of a real server.

Trains a model on a synthetic shop (or takes ``--model``), starts ``xsell serve`` as a
subprocess on 127.0.0.1, sends a bounded, seeded mix of requests (known and unknown customers,
every placement, a few unknown products) at each concurrency with httpx, and prints p50 / p95 /
p99 latency, requests per second and the RSS of the server's process tree, for ``/recommend``
and ``/healthz`` in the same run::

    python -m benchmarks.serving --customers 20000 [--requests 5000] [--concurrency 1 8]
    python -m benchmarks.serving --model models:/xsell-ranker@champion --profile

The shop and the trained model are cached under ``--work`` per size. ``--profile`` also runs
cProfile on ``XsellModel.recommend_one`` for the same mix, in process, and prints the top
functions (where a request's time goes).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

TARGETS = {
    "recommend p50 / healthz p50 at c=1": 2.0,
    "recommend p99 ms at c=8": 30.0,
    "recommend req/s at c=8": 250.0,
    "server RSS MB": 1536.0,
}
PLACEMENT_MIX = {"product_page": 0.4, "cart": 0.3, "checkout": 0.15, "post_purchase": 0.15}


@dataclass(frozen=True)
class Result:
    """Figures of one (endpoint, concurrency) run."""

    endpoint: str
    concurrency: int
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    per_second: float
    errors: int
    client_errors: int


# --------------------------------------------------------------------------- model


def trained_model(customers: int, work: Path, seed: int) -> Path:
    """A model folder for a synthetic shop of ``customers`` (cached under ``work``)."""
    from features.data.synthetic import generate_shop
    from training.model import export_model
    from training.tracking import tracking_uri
    from training.train import train

    folder = work / f"model-{customers}"
    if (folder / "meta.json").exists():
        return folder
    shop = work / f"shop-{customers}"
    if not (shop / "purchases.parquet").exists():
        print(f"generating a synthetic shop with {customers:,d} customers in {shop}", flush=True)
        generate_shop(shop, n_customers=customers, seed=seed)
    print("training (default config; cached for the next run)", flush=True)
    started = time.perf_counter()
    result = train(shop, root=work / "mlruns", experiment=f"bench-serving-{customers}")
    print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(work / "mlruns")
    export_model(f"models:/xsell-ranker/{result.version}", folder)
    return folder


# --------------------------------------------------------------------------- request mix


def request_mix(model_dir: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` request bodies: 85% known customers, placements per :data:`PLACEMENT_MIX`,
    popularity-weighted products, 3% unknown product ids, half of post-purchase without cart."""
    from features.snapshot import FeatureSnapshot

    snap = FeatureSnapshot.load(model_dir / "snapshot")
    rng = np.random.default_rng(seed)
    pop = snap.products.long_popularity + 1e-4
    pop = pop / pop.sum()
    placements = list(PLACEMENT_MIX)
    weights = np.asarray(list(PLACEMENT_MIX.values()))

    def product() -> str:
        if rng.random() < 0.03:
            return f"UNKNOWN-{rng.integers(1_000_000)}"
        return str(snap.product_ids[rng.choice(snap.n_products, p=pop)])

    out = []
    for _ in range(n):
        known = rng.random() < 0.85
        customer = (
            str(snap.customer_ids[rng.integers(snap.n_customers)])
            if known
            else f"NEW-{rng.integers(1_000_000)}"
        )
        placement = placements[rng.choice(len(placements), p=weights)]
        body: dict[str, Any] = {"customer_id": customer, "placement": placement}
        if placement == "product_page":
            body["product_id"] = product()
        elif placement in ("cart", "checkout"):
            body["cart"] = [product() for _ in range(rng.integers(1, 7))]
        elif rng.random() < 0.5:
            body["cart"] = [product() for _ in range(rng.integers(1, 5))]
        out.append(body)
    return out


# --------------------------------------------------------------------------- server


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    model: str, port: int, workers: int, home: Path, *, store: Path | None = None
) -> subprocess.Popen:
    """``xsell serve`` in its own process group, logs to ``home/server.log``, its event store
    in ``store`` (default ``home/store``)."""
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-c",
        "from training.cli import main; main()",
        "serve",
        "--port",
        str(port),
        "--model",
        model,
        "--workers",
        str(workers),
        "--store",
        str(store or home / "store"),
    ]
    log = (home / "server.log").open("a")
    return subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300.0) -> float:
    """Seconds until ``/readyz`` answers 200 (raises if the server dies or times out)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the server was not ready after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server's process group (SIGINT, then SIGKILL after 20 s)."""
    import signal

    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class RssSampler:
    """Samples the RSS of a process and its children every 0.2 s; ``peak_mb`` is the maximum."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current_mb(self) -> float:
        """RSS of the whole tree now, in MB."""
        total = 0
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_mb = max(self.peak_mb, self.current_mb())

    def __enter__(self) -> RssSampler:
        self.peak_mb = self.current_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- load


async def _load(
    base: str, endpoint: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[np.ndarray, float, int, int]:
    latencies = np.zeros(len(bodies))
    codes = np.zeros(len(bodies), dtype=np.int64)
    position = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            for i in position:
                started = time.perf_counter()
                if endpoint == "/healthz":
                    r = await client.get(endpoint)
                else:
                    r = await client.post(endpoint, json=bodies[i])
                latencies[i] = time.perf_counter() - started
                codes[i] = r.status_code

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies * 1000, wall, int((codes >= 500).sum()), int((codes >= 400).sum())


def run_load(
    base: str, endpoint: str, bodies: list[dict[str, Any]], concurrency: int, warmup: int
) -> Result:
    """Warm up, then send every body once with ``concurrency`` requests in flight."""
    asyncio.run(_load(base, endpoint, bodies[:warmup], concurrency))
    ms, wall, errors, client_errors = asyncio.run(_load(base, endpoint, bodies, concurrency))
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return Result(
        endpoint,
        concurrency,
        len(bodies),
        float(p50),
        float(p95),
        float(p99),
        len(bodies) / wall,
        errors,
        client_errors - errors,
    )


def profile_requests(model_dir: Path, bodies: list[dict[str, Any]], top: int) -> None:
    """cProfile of ``XsellModel.recommend_one`` on the request mix, in this process."""
    from serving.service import RecommendRequest
    from training.model import load_serving_model

    model, _ = load_serving_model(str(model_dir))
    requests = [RecommendRequest.model_validate(b) for b in bodies]

    def run() -> None:
        for r in requests:
            model.recommend_one(
                customer_id=r.customer_id,
                placement=r.placement,
                product_id=r.product_id,
                cart=list(r.cart),
                k=r.wanted(),
            )

    run()
    started = time.perf_counter()
    run()
    per_request = (time.perf_counter() - started) / len(requests) * 1000
    print(f"\nin-process recommend_one: {per_request:.2f} ms per request (mean, no profiler)")
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


# --------------------------------------------------------------------------- report


def report(results: list[Result], rss_mb: float) -> dict[str, float]:
    """Print the table and the targets; return the checked figures."""
    print(
        f"\n{'endpoint':<11} {'conc':>4} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'req/s':>8} {'5xx':>5} {'4xx':>5}"
    )
    for r in results:
        print(
            f"{r.endpoint:<11} {r.concurrency:>4} {r.requests:>8} {r.p50_ms:>8.2f} "
            f"{r.p95_ms:>8.2f} {r.p99_ms:>8.2f} {r.per_second:>8.1f} {r.errors:>5} "
            f"{r.client_errors:>5}"
        )
    by = {(r.endpoint, r.concurrency): r for r in results}
    figures: dict[str, float] = {"server RSS MB": rss_mb}
    if ("/recommend", 1) in by and ("/healthz", 1) in by:
        figures["recommend p50 / healthz p50 at c=1"] = (
            by["/recommend", 1].p50_ms / by["/healthz", 1].p50_ms
        )
    if ("/recommend", 8) in by:
        figures["recommend p99 ms at c=8"] = by["/recommend", 8].p99_ms
        figures["recommend req/s at c=8"] = by["/recommend", 8].per_second
    print(f"\nserver RSS (process tree, peak): {rss_mb:.0f} MB")
    for name, value in figures.items():
        target = TARGETS[name]
        ok = value >= target if "req/s" in name else value <= target
        bound = ">=" if "req/s" in name else "<="
        print(f"  {name:<36} {value:>9.2f}   target {bound} {target:<8g} {'ok' if ok else 'MISS'}")
    return figures


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000, help="synthetic shop size")
    parser.add_argument("--model", help="model URI or folder (skips generating and training)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "xsell-serving")
    parser.add_argument("--requests", type=int, default=5000, help="requests per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile recommend_one too")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        model = str(trained_model(args.customers, args.work, args.seed))
    else:
        model = args.model
    with tempfile.TemporaryDirectory(prefix="xsell-bench-") as tmp:
        home = Path(tmp)
        if Path(model).is_dir():
            model_dir = Path(model).resolve()
        else:
            from training.model import export_model

            model_dir, _ = export_model(model, home / "model")
        bodies = request_mix(model_dir, args.requests, args.seed)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(str(model_dir), port, args.workers, home)
        try:
            print(f"server ready in {wait_ready(base, proc):.1f} s ({args.workers} worker(s))")
            results = []
            with RssSampler(proc.pid) as rss:
                for c in args.concurrency:
                    for endpoint in ("/recommend", "/healthz"):
                        results.append(run_load(base, endpoint, bodies, c, args.warmup))
                        print(f"  done {endpoint} c={c}", flush=True)
        finally:
            stop_server(proc)
        figures = report(results, rss.peak_mb)
        if args.profile:
            profile_requests(model_dir, bodies[:1000], top=30)
    if args.json:
        args.json.write_text(
            json.dumps({"results": [asdict(r) for r in results], "figures": figures}, indent=1)
        )


if __name__ == "__main__":
    main()

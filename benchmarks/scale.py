"""Benchmark training at scale: the whole ``xsell train`` per shop size and engine.

For each size (synthetic customers) the shop is generated once (cached under ``--work``); then
each engine runs ``xsell train`` in its own process, against a fresh MLflow store, while this
process samples the memory of that process and of every process it starts (the Dask
scheduler's nanny and worker processes)::

    python -m benchmarks.scale --sizes 10000 100000 1000000 --engines local dask --workers 2
    python -m benchmarks.scale --data data/cj --config configs/completejourney.yaml

(``--data``: a shop folder of the data contract, e.g. Complete Journey, instead of the
synthetic sizes.)

Prints, per size and engine: wall time, peak RSS of the whole process tree (the sum of all its
processes at one moment), of the client (the ``xsell train`` process) and of the largest worker;
the time of each step of the run (from the run's own progress lines); and the ratio against the
local engine on the same shop in the same invocation. A run that would take the machine's
memory (``--memory-limit``, default 22 GB of the tree) or time (``--timeout``) is stopped and
reported as such: the figure is then a lower bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

GB = 2**30
_SAMPLE_SECONDS = 0.5


@dataclass
class Memory:
    """Peaks of one process tree, sampled while it ran."""

    tree: int = 0  # bytes: the sum over the tree at its largest moment
    client: int = 0  # the root process alone
    worker: int = 0  # the largest single other process (a Dask worker)
    workers: int = 0  # processes besides the root at the moment of the tree's peak
    window: int = 0  # the tree's peak since the last progress line (reset by the reader)


@dataclass
class Run:
    """Figures of one ``xsell train``."""

    customers: int
    order_lines: int
    engine: str
    seconds: float
    memory: Memory
    status: str  # "ok", "exit N", "stopped: memory", "stopped: time"
    # (progress line, seconds from the start, the tree's peak GB until the next line)
    steps: list[tuple[str, float, float]] = field(default_factory=list)


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def _kill(procs: list[psutil.Process]) -> None:
    """Kill a process tree, children first."""
    for p in reversed(procs):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def watch(
    process: subprocess.Popen[str], memory: Memory, limit: int, stop: threading.Event
) -> None:
    """Sample the tree under ``process`` until it exits; kill it above ``limit`` bytes."""
    root = psutil.Process(process.pid)
    while process.poll() is None and not stop.is_set():
        procs = _tree(root)
        sizes = [_rss(p) for p in procs]
        if sizes:
            total = sum(sizes)
            memory.window = max(memory.window, total)
            memory.client = max(memory.client, sizes[0])
            memory.worker = max([memory.worker, *sizes[1:]])
            if total > memory.tree:
                memory.tree, memory.workers = total, len(sizes) - 1
            if total > limit:
                stop.set()
                _kill(procs)
                return
        time.sleep(_SAMPLE_SECONDS)


def train_once(
    shop: Path,
    engine: str,
    workers: int,
    work: Path,
    limit: int,
    timeout: float,
    config: Path | None = None,
) -> tuple[float, Memory, str, list[tuple[str, float, float]]]:
    """One ``xsell train`` in a child process, its memory sampled; returns its figures."""
    store = Path(tempfile.mkdtemp(prefix=f"mlruns-{engine}-", dir=work))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    cli = "from training.cli import main; main()"
    command = [sys.executable, "-c", cli, "train", "--data", str(shop)]
    command += ["--engine", engine, "--experiment", f"bench-scale-{engine}"]
    if engine == "dask":
        command += ["--dask-workers", str(workers)]
    if config is not None:
        command += ["--config", str(config)]
    memory, stop = Memory(), threading.Event()
    steps: list[tuple[str, float, float]] = []
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    watcher = threading.Thread(target=watch, args=(process, memory, limit, stop), daemon=True)
    watcher.start()

    def out_of_time() -> None:
        stop.set()
        with contextlib.suppress(psutil.NoSuchProcess):
            _kill(_tree(psutil.Process(process.pid)))

    timer = threading.Timer(timeout, out_of_time)
    timer.start()
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        tail = [*tail[-20:], line]
        if line.lstrip().startswith(".."):
            _close_step(steps, memory)
            steps.append((line.strip(" ."), time.perf_counter() - started, 0.0))
    code = process.wait()
    _close_step(steps, memory)
    seconds = time.perf_counter() - started
    timer.cancel()
    watcher.join()
    if code == 0:
        status = "ok"
    elif stop.is_set():
        status = "stopped: time" if seconds >= timeout else "stopped: memory"
    else:
        status = f"exit {code}"
        print("\n".join(tail), file=sys.stderr)
    return seconds, memory, status, steps


def _close_step(steps: list[tuple[str, float, float]], memory: Memory) -> None:
    """Give the last step the tree's peak seen since it began (and print it: a long run shows
    its steps as they end); start a new window."""
    if steps:
        text, at, _ = steps[-1]
        steps[-1] = (text, at, memory.window / GB)
        print(f"{'':>12}{at:>7.0f} s {memory.window / GB:>6.2f} GB  {text[:90]}", flush=True)
    memory.window = 0


def shop_folder(customers: int, work: Path) -> tuple[Path, int]:
    """The synthetic shop of ``customers`` (generated once under ``work``) and its order
    lines."""
    import pyarrow.parquet as pq

    from features.data.synthetic import generate_shop

    folder = work / f"shop-{customers}"
    if not (folder / "purchases.parquet").exists():
        generate_shop(folder, n_customers=customers, seed=1)
    return folder, pq.ParquetFile(folder / "purchases.parquet").metadata.num_rows


def real_shop(folder: Path) -> tuple[int, int]:
    """Customers and order lines of a shop folder of the data contract."""
    import pyarrow.parquet as pq

    def rows(name: str) -> int:
        return pq.ParquetFile(folder / name).metadata.num_rows

    return rows("customers.parquet"), rows("purchases.parquet")


def _gb(n: int) -> str:
    return f"{n / GB:.2f}"


def format_row(run: Run, local: Run | None) -> str:
    """One table row; the ratios are against the local engine on the same shop."""
    ratio = ""
    if local is not None and local is not run and local.status == "ok":
        ratio = f"time x{run.seconds / local.seconds:.2f}, tree memory x"
        ratio += f"{run.memory.tree / max(local.memory.tree, 1):.2f}"
    m = run.memory
    return (
        f"{run.customers:>10,d} {run.order_lines:>12,d} {run.engine:>6} {run.seconds:>8.0f} "
        f"{_gb(m.tree):>8} {_gb(m.client):>8} {_gb(m.worker):>8} {run.status:>16}  {ratio}"
    )


HEADER = (
    f"{'customers':>10} {'order lines':>12} {'engine':>6} {'seconds':>8} "
    f"{'tree GB':>8} {'client':>8} {'worker':>8} {'status':>16}  vs local"
)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every size x engine, print the table and each run's steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--engines", nargs="+", choices=("local", "dask"), default=["local"])
    parser.add_argument("--workers", type=int, default=2, help="Dask LocalCluster workers")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "xsell-scale")
    parser.add_argument("--memory-limit", type=float, default=22.0, help="GB of the tree")
    parser.add_argument("--timeout", type=float, default=3 * 3600.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=None, help="append the runs here")
    parser.add_argument("--config", type=Path, default=None, help="xsell train --config")
    parser.add_argument("--data", type=Path, default=None, help="a shop folder instead of sizes")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    shops = [(args.data, *real_shop(args.data))] if args.data else []
    for size in [] if args.data else args.sizes:
        folder, lines = shop_folder(size, args.work)
        shops.append((folder, size, lines))
    runs: list[Run] = []
    for shop, customers, lines in shops:
        local: Run | None = None
        for engine in args.engines:
            print(
                f"{customers:,d} customers ({lines:,d} order lines), engine {engine}:", flush=True
            )
            seconds, memory, status, steps = train_once(
                shop,
                engine,
                args.workers,
                args.work,
                int(args.memory_limit * GB),
                args.timeout,
                args.config,
            )
            run = Run(customers, lines, engine, seconds, memory, status, steps)
            local = run if engine == "local" else local
            runs.append(run)
            print(HEADER + "\n" + format_row(run, local), flush=True)
            if args.json is not None:
                with args.json.open("a") as out:
                    out.write(json.dumps(asdict(run)) + "\n")
    print("\n" + HEADER)
    by_size: dict[int, Run] = {r.customers: r for r in runs if r.engine == "local"}
    for run in runs:
        print(format_row(run, by_size.get(run.customers)))


if __name__ == "__main__":
    main()

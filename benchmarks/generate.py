"""Benchmark the synthetic shop generator: wall time, throughput and peak memory per size.

Each size runs in its own child process so that its peak RSS is measured alone
(``os.wait4`` returns the child's own resource usage)::

    python benchmarks/generate.py --sizes 100000 1000000 [--out DIR] [--fmt parquet]

Without ``--out`` the shops are written to a temporary directory and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_KB_PER_MB = 1024  # ru_maxrss is in kilobytes on Linux


@dataclass(frozen=True)
class Result:
    """Figures of one benchmarked size."""

    customers: int
    order_lines: int
    events: int
    seconds: float
    peak_rss_mb: float
    disk_mb: float

    @property
    def lines_per_second(self) -> float:
        """Order lines written per second of generation."""
        return self.order_lines / self.seconds


def _child(n_customers: int, out: Path, fmt: str, seed: int, chunk_customers: int) -> None:
    """Generate one shop and print its counts and generation time as JSON."""
    from features.data.synthetic import generate_shop

    started = time.perf_counter()
    summary = generate_shop(
        out, n_customers=n_customers, seed=seed, fmt=fmt, chunk_customers=chunk_customers
    )
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "order_lines": summary.n_purchases,
                "events": summary.n_events,
                "seconds": seconds,
            }
        )
    )


def run_size(n_customers: int, out: Path, *, fmt: str, seed: int, chunk_customers: int) -> Result:
    """Run one size in a child process and collect its figures."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(n_customers),
        "--out",
        str(out),
        "--fmt",
        fmt,
        "--seed",
        str(seed),
        "--chunk-customers",
        str(chunk_customers),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # the child's own peak RSS, not the max
    process.returncode = exit_code = os.waitstatus_to_exitcode(status)  # already reaped
    if exit_code != 0:
        raise RuntimeError(f"generation of {n_customers} customers failed (exit {exit_code})")
    figures = json.loads(stdout.decode().strip().splitlines()[-1])
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Result(
        customers=n_customers,
        order_lines=figures["order_lines"],
        events=figures["events"],
        seconds=figures["seconds"],
        peak_rss_mb=usage.ru_maxrss / _KB_PER_MB,
        disk_mb=disk / 2**20,
    )


def format_table(results: list[Result]) -> str:
    """The results as a fixed-width text table."""
    header = (
        f"{'customers':>10} {'order lines':>12} {'events':>12} {'seconds':>8} "
        f"{'lines/s':>10} {'peak RSS MB':>12} {'disk MB':>8}"
    )
    rows = [
        f"{r.customers:>10,d} {r.order_lines:>12,d} {r.events:>12,d} {r.seconds:>8.1f} "
        f"{r.lines_per_second:>10,.0f} {r.peak_rss_mb:>12,.0f} {r.disk_mb:>8,.0f}"
        for r in results
    ]
    return "\n".join([header, *rows])


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the benchmark (or, with ``--child``, one generation)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=None, help="keep the shops under this dir")
    parser.add_argument("--fmt", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-customers", type=int, default=50_000)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        _child(args.child, args.out, args.fmt, args.seed, args.chunk_customers)
        return

    root = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="xsell-bench-"))
    print(format_table([]), flush=True)
    try:
        for n in args.sizes:
            result = run_size(
                n,
                root / f"shop_{n}",
                fmt=args.fmt,
                seed=args.seed,
                chunk_customers=args.chunk_customers,
            )
            print(format_table([result]).splitlines()[-1], flush=True)
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark one ``/recommend`` request in process: where its CPU time goes, stage by stage.

Loads a model folder, builds the seeded request mix of :func:`benchmarks.serving.request_mix`
and, in worker processes, measures

* ``XsellModel.recommend_one`` per request (mean, p50, p99 after a warm-up pass), and
* the same requests through the same pipeline functions called one by one with timers around
  each stage: the one-query batch, every candidate source, the merge (eligibility, top per
  source, budget), features, the served policy's scores (LightGBM predict or a baseline),
  guardrails, items and reasons.

The staged pass must give exactly the recommendations of ``recommend_one`` (checked).

``--baseline REF`` runs the same measurement on the code of a git revision (``git archive``
into a temporary folder, read-only for the working tree) in a second worker; the workers
take turns round by round, so both see the same machine load. ``--compiled`` adds a worker
running the working tree with ``XsellModel.compile_rankers()`` (lleaves; machine code cached in
``--compiled-cache``). The result digests of all workers must match: an optimisation must not
change what is recommended::

    python -m benchmarks.request_path [--model /tmp/xsell-serving/model-5000]
        [--requests 600] [--rounds 3] [--baseline HEAD] [--compiled] [--profile 30]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import os
import pstats
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path("/tmp/xsell-serving/model-5000")
CURRENT = "working tree"
COMPILED = "+ compiled"


# --------------------------------------------------------------------------- worker side


@dataclass
class Stages:
    """Accumulated seconds per stage name, in first-seen order."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the block under ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


def _digest(results: list[dict[str, list[tuple[str, float]]]]) -> str:
    """A hash of every (task, product, score) of every request, in order."""
    h = hashlib.sha256()
    for r in results:
        h.update(json.dumps(r, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _call(model: Any, body: dict[str, Any]) -> dict[str, Any]:
    """``recommend_one`` for a request body, with the placement's default ``k``."""
    from features.recommend import placement_defaults

    return model.recommend_one(
        customer_id=body["customer_id"],
        placement=body["placement"],
        product_id=body.get("product_id"),
        cart=list(body.get("cart", [])),
        k=placement_defaults(body["placement"]),
    )


def _flat(result: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    return {t: [(i.product_id, i.score) for i in r.items] for t, r in result.items()}


def staged_one(model: Any, body: dict[str, Any], clock: Stages) -> dict[str, Any]:
    """One request through the pipeline of ``recommend_one``, stage by stage under ``clock``.

    Returns:
        Task -> recommended ``(product_id, score)`` list (what ``recommend_one`` returns).
    """
    from features.candidates import merge_candidates
    from features.guardrails import apply_guardrails
    from features.matrix import features_for_candidates
    from features.recommend import placement_defaults
    from features.sources import sources_for
    from features.tasks import tasks_at

    snap = model.snapshot
    cfg = snap.config
    k = placement_defaults(body["placement"])
    served = {t.name for t in model.tasks}
    product_id = body.get("product_id")
    out: dict[str, list[tuple[str, float]]] = {}
    for task in tasks_at(body["placement"]):
        want = k.get(task.name, 0)
        if want <= 0 or task.name not in served or (task.needs_anchor and product_id is None):
            continue
        with clock("request batch"):
            batch = model.request_batch(
                task=task.name,
                customer_id=body["customer_id"],
                placement=body["placement"],
                product_id=product_id,
                cart=list(body.get("cart", [])),
            )
        sets = []
        for src in sources_for(task.name):
            with clock(f"source {src.name}"):
                sets.append(src.build(batch, snap))
        with clock("merge"):
            cands = merge_candidates(
                batch, snap, sets, per_source=cfg.per_source, budget=cfg.candidates_for(task.name)
            )
        with clock("features"):
            fm = features_for_candidates(batch, snap, cands)
        with clock("predict" if model.policy(task.name) == "ranker" else "baseline score"):
            sc = model.score(fm, task.name)
        with clock("guardrails"):
            sel = apply_guardrails(batch, snap, fm, sc, np.asarray([want]))
        with clock("items + reasons"):
            items = model._items(batch, fm, sc, sel.rows)
        if not items and task.popular_fallback:
            with clock("popular fallback (whole task again)"):
                items = model._one(task, batch, want).items
        out[task.name] = [(i.product_id, i.score) for i in items]
    return out


def measure_round(model: Any, bodies: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """One round: warm-up, timed ``recommend_one`` per request, then the staged pass."""
    for b in bodies[:warmup]:
        _call(model, b)
    timed = bodies[warmup:]
    gc.collect()
    per_request = []
    results = []
    for b in timed:
        started = time.perf_counter()
        r = _call(model, b)
        per_request.append((time.perf_counter() - started) * 1000)
        results.append(_flat(r))
    clock = Stages()
    gc.collect()
    staged_started = time.perf_counter()
    staged = [staged_one(model, b, clock) for b in timed]
    staged_ms = (time.perf_counter() - staged_started) * 1000
    return {
        "per_request_ms": per_request,
        "stages_ms": {name: s * 1000 for name, s in clock.seconds.items()},
        "staged_total_ms": staged_ms,
        "digest": _digest(results),
        "staged_matches": sum(a == b for a, b in zip(results, staged, strict=True)),
    }


def worker(model_dir: Path, bodies_file: Path, warmup: int, compiled: Path | None) -> None:
    """Serve rounds on stdin (``round`` / ``quit``), one JSON line per round on stdout.

    BLAS runs on one thread, as in a serving worker (``serving.service.single_thread_blas``;
    set here directly, so that a baseline revision without it is measured the same way).

    Args:
        compiled: Compile the rankers (machine code cached in that folder) before measuring.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from features.recommend import XsellModel

    threadpool_limits(limits=1, user_api="blas")
    model = XsellModel.load(model_dir)
    if compiled is not None:
        model.compile_rankers(cache_dir=compiled)
    bodies = json.loads(bodies_file.read_text())
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        print(json.dumps(measure_round(model, bodies, warmup)), flush=True)


# --------------------------------------------------------------------------- driver side


@dataclass
class Variant:
    """A worker process running one version of the code."""

    label: str
    proc: subprocess.Popen[str]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def run_round(self) -> None:
        """Ask for one round and keep its figures."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.label!r} died")
        self.rounds.append(json.loads(line))

    def close(self) -> None:
        """Stop the worker."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def export_revision(ref: str, dst: Path) -> Path:
    """The ``features/``, ``training/`` and ``benchmarks/`` of git revision ``ref`` in ``dst``."""
    archive = dst / "code.tar"
    with archive.open("wb") as fh:
        subprocess.run(
            ["git", "archive", "--format=tar", ref, "features", "training", "benchmarks"],
            cwd=REPO,
            stdout=fh,
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(dst / "code", filter="data")
    # the worker is this file, whatever the revision holds
    shutil.copy(Path(__file__), dst / "code" / "benchmarks" / "request_path.py")
    return dst / "code"


def start_worker(
    label: str,
    code_root: Path,
    model_dir: Path,
    bodies_file: Path,
    warmup: int,
    *,
    compiled: Path | None = None,
) -> Variant:
    """A worker process running ``python -m benchmarks.request_path`` in ``code_root`` (its
    ``features`` are the ones imported)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.request_path",
        "--worker",
        "--model",
        str(model_dir),
        "--bodies",
        str(bodies_file),
        "--warmup",
        str(warmup),
        *(["--compiled", "--compiled-cache", str(compiled)] if compiled is not None else []),
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(code_root)},
        cwd=code_root,
    )
    assert proc.stdout is not None
    if not proc.stdout.readline():
        raise RuntimeError(f"worker {label!r} failed to start")
    return Variant(label, proc)


def summary(v: Variant) -> dict[str, float]:
    """Pooled request figures and per-stage medians over rounds, ms per request."""
    times = np.concatenate([r["per_request_ms"] for r in v.rounds])
    n = len(v.rounds[0]["per_request_ms"])
    out = {
        "recommend_one mean": float(times.mean()),
        "recommend_one p50": float(np.percentile(times, 50)),
        "recommend_one p99": float(np.percentile(times, 99)),
        "staged total": float(np.median([r["staged_total_ms"] for r in v.rounds])) / n,
    }
    names = dict.fromkeys(name for r in v.rounds for name in r["stages_ms"])
    for name in names:
        out[name] = float(np.median([r["stages_ms"].get(name, 0.0) for r in v.rounds])) / n
    return out


def print_table(variants: list[Variant]) -> None:
    """The figures of every variant side by side (ms per request), sources folded in a sum."""
    sums = [summary(v) for v in variants]
    for s in sums:
        s["sources (sum)"] = sum(val for name, val in s.items() if name.startswith("source "))
    rows = list(dict.fromkeys(name for s in sums for name in s))
    head = ["recommend_one mean", "recommend_one p50", "recommend_one p99", "staged total"]
    order = [
        *head,
        "request batch",
        "sources (sum)",
        *sorted(r for r in rows if r.startswith("source ")),
        *[r for r in rows if r not in head and not r.startswith("source") and r != "request batch"],
    ]
    width = max(len(r) for r in order) + 2
    ratios = "".join(f"{'x ' + v.label[:10]:>14}" for v in variants[1:])
    header = "".join(f"{v.label:>16}" for v in variants)
    print("\nms per request" + " " * (width - 14) + header + ratios)
    for row in order:
        cells = "".join(f"{s.get(row, 0.0):16.3f}" for s in sums)
        first = sums[0].get(row, 0.0)
        ratio = "".join(
            f"{s.get(row, 0.0) / first:14.2f}" if first > 0 else " " * 14 for s in sums[1:]
        )
        label = f"  {row[len('source ') :]}" if row.startswith("source ") else row
        print(f"{label:<{width}}{cells}{ratio}")
    for v in variants:
        digests = {r["digest"] for r in v.rounds}
        matches = min(r["staged_matches"] for r in v.rounds)
        n = len(v.rounds[0]["per_request_ms"])
        print(f"{v.label}: results digest {sorted(digests)}; staged == recommend_one {matches}/{n}")
    if len(variants) > 1:
        same = len({r["digest"] for v in variants for r in v.rounds}) == 1
        print(f"identical recommendations across variants: {'yes' if same else 'NO'}")


def profile(model_dir: Path, bodies: list[dict[str, Any]], top: int) -> None:
    """cProfile of ``recommend_one`` on the mix with the working-tree code, top functions."""
    from features.recommend import XsellModel

    model = XsellModel.load(model_dir)
    for b in bodies:
        _call(model, b)
    profiler = cProfile.Profile()
    profiler.enable()
    for b in bodies:
        _call(model, b)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the workers round by round, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder")
    parser.add_argument("--requests", type=int, default=600, help="timed requests per round")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", default=None, help="git revision to compare with")
    parser.add_argument("--profile", type=int, default=0, help="print the top N of cProfile")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also run the working tree with compiled rankers (XsellModel.compile_rankers)",
    )
    parser.add_argument(
        "--compiled-cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "xsell-forest-cache",
        help="machine code cache of --compiled",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.model, args.bodies, args.warmup, args.compiled_cache if args.compiled else None)
        return

    from benchmarks.serving import request_mix

    bodies = request_mix(args.model, args.warmup + args.requests, args.seed)
    with tempfile.TemporaryDirectory(prefix="xsell-request-path-") as tmp:
        bodies_file = Path(tmp) / "bodies.json"
        bodies_file.write_text(json.dumps(bodies))
        variants = []
        if args.baseline:
            code = export_revision(args.baseline, Path(tmp))
            variants.append(start_worker(args.baseline, code, args.model, bodies_file, args.warmup))
        variants.append(start_worker(CURRENT, REPO, args.model, bodies_file, args.warmup))
        if args.compiled:
            variants.append(
                start_worker(
                    COMPILED,
                    REPO,
                    args.model,
                    bodies_file,
                    args.warmup,
                    compiled=args.compiled_cache,
                )
            )
        print(
            f"{args.requests} requests x {args.rounds} rounds (after {args.warmup} warm-up), "
            f"model {args.model}",
            flush=True,
        )
        try:
            for i in range(args.rounds):
                for v in variants if i % 2 == 0 else variants[::-1]:  # alternate who goes first
                    v.run_round()
                print(f"round {i + 1}/{args.rounds} done", flush=True)
        finally:
            for v in variants:
                v.close()
    print_table(variants)
    if args.profile:
        profile(args.model, bodies[args.warmup :], args.profile)


if __name__ == "__main__":
    main()

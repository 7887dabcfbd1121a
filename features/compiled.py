"""Compiled rankers for serving: LightGBM trees as machine code (lleaves), the same scores.

``Booster.predict`` on the few hundred rows of one request spends most of its time in per-call
set-up; a forest compiled by lleaves scores the same rows several times faster. With one cache
block over all trees (``fblocksize`` = number of trees) lleaves adds the trees' outputs in
LightGBM's order, so the scores are bit-identical; :func:`compile_ranker` checks that on a
probe matrix built from the forest's own split thresholds (each threshold, its float32
neighbours, zero, tiny values, NaN and every category) and refuses a forest that differs.

Compiling takes seconds per forest; pass a ``cache_dir`` to keep the machine code between
processes (keyed by the model text, the lleaves version and the host CPU). Processes sharing a
cache (the service's workers, starting together) take turns on a lock file: one compiles and
writes the machine code, the others then load it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

log = logging.getLogger(__name__)

PROBE_ROWS = 4000


class CompileError(RuntimeError):
    """A forest could not be compiled, or its compiled scores differ from LightGBM's."""


@dataclass(frozen=True)
class CompiledRanker:
    """A LightGBM booster and its compiled twin.

    Attributes:
        booster: The booster it was compiled from (the scores equal its ``predict``).
        model: The compiled ``lleaves.Model``.
    """

    booster: lgb.Booster
    model: Any

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Raw scores of the rows of ``X`` on this thread (as ``booster.predict``)."""
        return np.asarray(self.model.predict(np.asarray(X, dtype=np.float64), n_jobs=1))


def _split_values(booster: lgb.Booster) -> list[np.ndarray]:
    """Per feature, float32 values on both sides of every split of the forest."""
    numeric: list[set[float]] = [set() for _ in range(booster.num_feature())]
    categories: list[set[int]] = [set() for _ in range(booster.num_feature())]

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" not in node:
            return
        feature = int(node["split_feature"])
        if node.get("decision_type") == "==":
            categories[feature].update(int(c) for c in str(node["threshold"]).split("||"))
        else:
            numeric[feature].add(float(node["threshold"]))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    out = []
    for num, cat in zip(numeric, categories, strict=True):
        t = np.asarray(sorted(num), dtype=np.float32)
        up = np.nextafter(t, np.float32(np.inf))
        down = np.nextafter(t, np.float32(-np.inf))
        levels = np.asarray(sorted(cat), dtype=np.float32)
        extra = np.asarray([0.0, -0.0, 1e-36, -1e-36, -1.0, np.nan], dtype=np.float32)
        more = levels + 1 if len(levels) else np.zeros(0, dtype=np.float32)
        out.append(np.concatenate([t, up, down, levels, more, extra]))
    return out


def probe_matrix(booster: lgb.Booster, rows: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """``rows`` float32 rows whose values sit on, just above and just below every split
    threshold of the forest (plus zeros, tiny values, NaN and the categories)."""
    rng = np.random.default_rng(seed)
    values = _split_values(booster)
    X = np.empty((rows, len(values)), dtype=np.float32)
    for j, v in enumerate(values):
        X[:, j] = v[rng.integers(len(v), size=rows)]
    return X


def _cache_file(cache_dir: Path, text: str) -> Path:
    import lleaves
    import llvmlite.binding

    key = "\n".join(
        [text, str(getattr(lleaves, "__version__", "")), llvmlite.binding.get_host_cpu_name()]
    )
    return cache_dir / f"forest-{hashlib.sha256(key.encode()).hexdigest()[:24]}.o"


@contextmanager
def _cache_lock(cache_dir: Path) -> Iterator[None]:
    """Hold the cache folder's lock file (exclusive; released on exit, or when the process
    dies)."""
    with (cache_dir / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compile_ranker(booster: lgb.Booster, *, cache_dir: Path | None = None) -> CompiledRanker:
    """Compile ``booster`` with lleaves and check its scores on :func:`probe_matrix`.

    Args:
        booster: A trained LightGBM booster (lambdarank: raw scores).
        cache_dir: Where to keep (and look up) the machine code; None compiles every time.

    Raises:
        CompileError: lleaves is missing, fails, or scores differently from LightGBM.
    """
    try:
        import lleaves
    except ImportError as exc:
        raise CompileError(f"lleaves is not installed: {exc}") from exc
    text = booster.model_to_string()
    with tempfile.TemporaryDirectory(prefix="xsell-forest-") as tmp:
        model_file = Path(tmp) / "model.txt"
        model_file.write_text(text)
        cache = None
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            cache = str(_cache_file(Path(cache_dir), text))
        try:
            model = lleaves.Model(model_file=str(model_file))
            with nullcontext() if cache_dir is None else _cache_lock(Path(cache_dir)):
                model.compile(cache=cache, fblocksize=model.num_trees())
        except Exception as exc:  # lleaves / llvmlite raise several types
            raise CompileError(f"lleaves could not compile the forest: {exc}") from exc
    compiled = CompiledRanker(booster, model)
    X = probe_matrix(booster)
    expected = np.asarray(booster.predict(X, num_threads=1))
    got = compiled.predict(X)
    if not np.array_equal(expected, got):
        worst = float(np.nanmax(np.abs(expected - got)))
        raise CompileError(f"compiled scores differ from LightGBM's (max |diff| {worst:.3g})")
    return compiled

"""What a serving worker holds besides the request models: the variants of the traffic split
(each a loaded model), the event store, and the snapshot hot reload.

- **Variants** (:mod:`online.experiments`): every variant's model is loaded at start (a model
  folder is loaded once however many variants share it; policy overrides are checked then), and
  each request is served by the customer's variant.
- **Store**: opened at start; when it is down the service still answers from the snapshot and
  says so (``degraded``), and retries opening it every :data:`RETRY_SECONDS`.
- **Recommendation log** (:class:`RecommendationLog`): what ``/recommend`` served is queued and
  written by a background thread in batches (one commit per batch, not an fsync per request);
  a lookup (``POST /feedback``) sees queued records at once, and a miss waits one flush interval
  and looks again, which covers another worker's queue.
- **Snapshot reload**: a daemon thread polls each model folder's snapshot pointer
  (:func:`features.recommend.snapshot_stamp`) every ``$XSELL_RELOAD_SECONDS`` (default 5) and
  swaps a refreshed snapshot in (``xsell snapshot refresh``): requests keep being answered by the
  old one until the new one is loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from features.recommend import ModelLoadError, XsellModel, current_snapshot, snapshot_stamp
from features.snapshot import FeatureSnapshot
from online.experiments import Experiment, Variant
from online.records import RecommendationRecord
from online.store import EventStore, StoreError

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
FLUSH_SECONDS = 0.05  # the recommendation log's write interval
FLUSH_ROWS = 256


@dataclass(frozen=True)
class ServedVariant:
    """One arm of the split as served: its name, model (policies overridden) and version."""

    name: str
    model: XsellModel
    version: str
    folder: Path | None
    cutoff: datetime = field(init=False)  # the snapshot's cut-off (naive), read per request

    def __post_init__(self) -> None:
        cutoff = self.model.snapshot.as_of_timestamp.to_pydatetime()
        object.__setattr__(self, "cutoff", cutoff)  # frozen: set once, per snapshot


def with_policies(model: XsellModel, overrides: dict[str, str]) -> XsellModel:
    """``model`` serving ``overrides`` (task -> policy) instead of its own policies.

    Raises:
        ModelLoadError: An unknown task, an unknown baseline, or ``ranker`` for a task that
            has no ranker in the bundle.
    """
    if not overrides:
        return model
    known = {t.name for t in model.tasks}
    for task, policy in overrides.items():
        if task not in known:
            raise ModelLoadError(
                f"policy override for unknown task {task!r} (have {sorted(known)})"
            )
        probe = replace(model, policies={**model.policies, task: policy})
        try:
            probe.check_policies()
        except ValueError as exc:
            raise ModelLoadError(f"policy override {task}={policy!r}: {exc}") from exc
    return replace(model, policies={**model.policies, **overrides})


class Variants:
    """The loaded variants of an experiment and the customer -> variant assignment."""

    def __init__(
        self, experiment: Experiment, models: dict[str, tuple[XsellModel, str, Path | None]]
    ) -> None:
        """Serve ``experiment`` with loaded models.

        Args:
            experiment: The split.
            models: Variant name -> (model before its policy overrides, version label, model
                folder or None when not loaded from a folder: no hot reload).

        Raises:
            ModelLoadError: A variant's policy override cannot be served.
        """
        self.experiment = experiment
        self.served: dict[str, ServedVariant] = {}
        for variant in experiment.variants:
            model, version, folder = models[variant.name]
            self.served[variant.name] = ServedVariant(
                variant.name, with_policies(model, variant.policies), version, folder
            )
        self._stamps = {f: snapshot_stamp(f) for _, _, f in models.values() if f is not None}
        self._lock = threading.Lock()

    def for_customer(self, customer_id: str) -> ServedVariant:
        """The variant serving ``customer_id`` (stable)."""
        return self.served[self.experiment.assign(customer_id).name]

    @property
    def default(self) -> ServedVariant:
        """The control variant (what ``GET /model`` describes)."""
        return self.served[self.experiment.control]

    def variant(self, name: str) -> Variant:
        """The declaration of variant ``name``."""
        return next(v for v in self.experiment.variants if v.name == name)

    def reload_changed(self) -> list[Path]:
        """Swap in refreshed snapshots of the model folders whose pointer changed.

        Returns:
            The folders reloaded. A snapshot that fails to load is logged and skipped (the old
            one keeps serving).
        """
        done = []
        for folder, stamp in list(self._stamps.items()):
            now = snapshot_stamp(folder)
            if now == stamp:
                continue
            try:  # `xsell snapshot refresh` checked it against the rankers before switching
                fresh = FeatureSnapshot.load(current_snapshot(folder))
            except (ValueError, OSError) as exc:
                log.error("snapshot refresh of %s not loaded: %s", folder, exc)
                self._stamps[folder] = now
                continue
            self._swap(folder, fresh)
            self._stamps[folder] = now
            done.append(folder)
            log.info("snapshot of %s refreshed: as of %s", folder, fresh.as_of_timestamp)
        return done

    def _swap(self, folder: Path, snapshot: FeatureSnapshot) -> None:
        with self._lock:
            self.served = {
                name: replace(v, model=replace(v.model, snapshot=snapshot))
                if v.folder == folder
                else v
                for name, v in self.served.items()
            }

    def watch(self, every: float) -> threading.Thread:
        """Poll for refreshed snapshots every ``every`` seconds in a daemon thread."""

        def loop() -> None:
            while True:
                time.sleep(every)
                try:
                    self.reload_changed()
                except Exception:  # a reload must never kill the worker
                    log.exception("snapshot reload failed")

        thread = threading.Thread(target=loop, name="xsell-snapshot-watch", daemon=True)
        thread.start()
        return thread


class StoreHandle:
    """The event store, or why it is not available (reopened on demand after a failure)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.store: EventStore | None = None
        self.problem: str | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.get()

    def get(self) -> EventStore | None:
        """The open store, or None (``problem`` says why) — retried every few seconds."""
        if self.store is not None:
            return self.store
        with self._lock:
            if self.store is None and time.monotonic() >= self._retry_at:
                try:
                    self.store = EventStore.open(self.location)
                    self.problem = None
                except StoreError as exc:
                    self.problem = str(exc)
                    self._retry_at = time.monotonic() + RETRY_SECONDS
                    log.error("event store unavailable: %s", exc)
        return self.store

    def failed(self, exc: StoreError) -> str:
        """Record a failure of the open store; the message to report."""
        self.problem = str(exc)
        return self.problem

    def status(self) -> str | None:
        """None when healthy, else what is wrong (checks the store)."""
        store = self.get()
        if store is None:
            return self.problem or "event store not open"
        problem = store.check()
        self.problem = problem
        return problem


class RecommendationLog:
    """Writes served recommendations to the store from a background thread, in batches.

    ``/recommend`` only appends to a queue (microseconds); the writer commits whatever is
    queued every :data:`FLUSH_SECONDS` (or at :data:`FLUSH_ROWS`). A record that cannot be
    written (the store down) is dropped and counted in ``lost`` (the answer was already served;
    feedback against it will be refused as unknown) and the failure is logged.
    """

    def __init__(self, handle: StoreHandle) -> None:
        self.handle = handle
        self.lost = 0
        self._queue: list[RecommendationRecord] = []
        self._pending: dict[str, RecommendationRecord] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xsell-rec-log", daemon=True)
        self._thread.start()

    def add(self, record: RecommendationRecord) -> None:
        """Queue ``record`` for the store."""
        with self._lock:
            self._queue.append(record)
            self._pending[record.recommendation_id] = record
            if len(self._queue) >= FLUSH_ROWS:
                self._wake.set()

    def get(self, recommendation_id: str) -> RecommendationRecord | None:
        """A queued or stored record (a miss waits one flush and looks again).

        Raises:
            StoreError: The store cannot be read.
        """
        for attempt in range(2):
            with self._lock:
                queued = self._pending.get(recommendation_id)
            if queued is not None:
                return queued
            store = self.handle.get()
            if store is None:
                raise StoreError(self.handle.problem or "event store not open")
            found = store.recommendation(recommendation_id)
            if found is not None or attempt:
                return found
            time.sleep(2 * FLUSH_SECONDS)
        return None

    def flush(self) -> int:
        """Write what is queued now; the number written."""
        with self._lock:
            batch, self._queue = self._queue, []
        if not batch:
            return 0
        store = self.handle.get()
        try:
            if store is None:
                raise StoreError(self.handle.problem or "event store not open")
            store.add_recommendations(batch)
        except StoreError as exc:
            self.lost += len(batch)
            log.error("%d recommendations not recorded: %s", len(batch), self.handle.failed(exc))
            written = 0
        else:
            written = len(batch)
        with self._lock:
            for record in batch:
                self._pending.pop(record.recommendation_id, None)
        return written

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer must never die
                log.exception("recommendation log flush failed")

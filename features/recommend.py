"""The request pipeline and the saved bundle it scores with: one home for serving, batch
scoring (``xsell recommend``) and evaluation.

A request is (customer, placement, anchor product, cart, ``as_of``). The pipeline:

1. **Placement policy** — which tasks a placement asks for and how many items by default
   (declared per task, :func:`placement_defaults`).
2. **Default context** — post purchase without a cart or product: the customer's last order
   (:func:`default_context`, the one rule).
3. **as_of policy** — a request without ``as_of`` is scored as of the snapshot; a request
   *earlier* than the snapshot is refused with :class:`AsOfError` (its features would see
   later data); later requests use their own ``as_of`` with the snapshot's statistics.
4. candidates → features → scores (the task's **served policy**: its ranker, or the baseline
   that beat it on the holdout) → the task's guardrails → reasons.
5. **Cold start** — an unknown customer is served like anyone else (segment-free popularity
   and context sources) and flagged; a task declaring ``popular_fallback`` fills an empty list
   with segment popularity.

:class:`XsellModel` is the bundle: rankers per task, the feature snapshot, the served policy per
task and metadata, saved as a plain folder (``meta.json``, ``<task>.txt``, ``snapshot/``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.batch import (
    ANCHOR,
    AS_OF,
    CART,
    PLACEMENT,
    QUERY_ID,
    K,
    QueryBatch,
    batch_from_frame,
    single_query,
)
from features.candidates import candidates_for_products
from features.compiled import CompiledRanker, CompileError, compile_ranker
from features.data import schema as s
from features.guardrails import Selection, apply_guardrails, reasons
from features.live import NO_ACTIVITY, LiveActivity
from features.matrix import FeatureMatrix, build_features, feature_columns, features_for_candidates
from features.rules import all_of
from features.snapshot import FeatureSnapshot, to_days
from features.tasks import Task, all_tasks, get_task, tasks_at

log = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = 4
SNAPSHOT_DIR = "snapshot"
# A refreshed snapshot (`xsell snapshot refresh`) is a sibling folder named by this file; the
# file is replaced atomically, so a reader sees the old snapshot or the new one, never neither.
SNAPSHOT_POINTER = "SNAPSHOT"
KEEP_SNAPSHOTS = 2  # refreshed snapshots kept (the current one and the one before)
OUTPUT_COLUMNS = ("query_id", "task", "rank", "product_id", "score")
POST_PURCHASE = "post_purchase"
RANKER = "ranker"
BASELINE_PREFIX = "baseline:"
RANKED_ON_REQUEST = "ranked for you"
POPULAR_REASON = "popular right now"


class ModelLoadError(ValueError):
    """A model folder is missing, corrupt or of another format version."""


class OutdatedModelError(ModelLoadError):
    """A sound model this code cannot serve: another format version, or rankers trained on the
    feature columns of earlier feature code."""


class AsOfError(ValueError):
    """A request is earlier than the model's snapshot (it would be scored with later data)."""


@dataclass(frozen=True)
class Recommendation:
    """One recommended product."""

    product_id: str
    score: float
    price: float
    reason: str


@dataclass(frozen=True)
class QueryResult:
    """Recommendations of one query and task, with the served policy, flags and warnings."""

    items: list[Recommendation]
    fallback: bool
    policy: str = RANKER
    warnings: list[str] = field(default_factory=list)


def placement_defaults(placement: str) -> dict[str, int]:
    """Task -> default number of items at ``placement`` (tasks that placement asks for)."""
    if placement not in s.PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; expected one of {s.PLACEMENTS}")
    return {t.name: int(t.placements[placement]) for t in tasks_at(placement)}


def default_context(
    snapshot: FeatureSnapshot,
    customer_id: str,
    placement: str,
    product_id: str | None,
    cart: list[str],
    live: LiveActivity = NO_ACTIVITY,
) -> list[str]:
    """The request's cart; when it sends none: post purchase without a product, the customer's
    last order (live, else the snapshot's); elsewhere the live cart (:mod:`features.live`)."""
    if cart:
        return cart
    if placement == POST_PURCHASE and product_id is None:
        last = (
            live.last_order
            if len(live.last_order)
            else snapshot.last_order(snapshot.customer_index.get(customer_id, -1))
        )
        return [str(p) for p in snapshot.product_ids[last]]
    return [str(p) for p in snapshot.product_ids[live.cart]]


def resolve_as_of(snapshot: FeatureSnapshot, as_of: pd.Timestamp | None) -> float:
    """The request time in days: the snapshot's cut-off when None.

    Raises:
        AsOfError: ``as_of`` is earlier than the snapshot's cut-off.
    """
    if as_of is None:
        return snapshot.as_of
    days = float(to_days(pd.Timestamp(as_of)))
    if days < snapshot.as_of - 1e-9:
        raise AsOfError(
            f"as_of {pd.Timestamp(as_of)} is earlier than the model's data "
            f"(snapshot {snapshot.as_of_timestamp}); refused: it would be scored with later data"
        )
    return days


def _parse_policy(policy: str) -> str | None:
    """The baseline name of a ``baseline:<name>`` policy, None for the ranker."""
    if policy == RANKER:
        return None
    if policy.startswith(BASELINE_PREFIX):
        return policy[len(BASELINE_PREFIX) :]
    raise ValueError(f"unknown served policy {policy!r} (expected 'ranker' or 'baseline:<name>')")


@dataclass
class XsellModel:
    """The saved bundle: rankers per task, the snapshot they were trained against, the served
    policy per task and metadata.

    Attributes:
        snapshot: Features as of the end of training data.
        boosters: Task -> LightGBM booster (a task may have none when its policy is a baseline).
        policies: Task -> ``ranker`` or ``baseline:<name>``.
        meta: Training facts (version, data range, metrics, feature columns).
        compiled: Task -> its booster compiled to machine code (:meth:`compile_rankers`;
            empty unless asked for). Never saved: a loaded model scores with LightGBM.
    """

    snapshot: FeatureSnapshot
    boosters: dict[str, lgb.Booster]
    policies: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    compiled: dict[str, CompiledRanker] = field(default_factory=dict)

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The registered tasks this bundle serves (a ranker or a policy for each)."""
        return tuple(t for t in all_tasks() if t.name in self.boosters or t.name in self.policies)

    def policy(self, task: str) -> str:
        """The served policy of ``task`` (``ranker`` unless training chose a baseline)."""
        return self.policies.get(task, RANKER)

    def columns(self, task: str) -> list[str]:
        """Feature columns of ``task``."""
        return feature_columns(self.snapshot, task)

    def ranker_score(self, X: np.ndarray, task: str, *, num_threads: int = 1) -> np.ndarray:
        """The ranker's scores of a feature block (one thread, NumPy input: the serving path);
        the compiled forest's when :meth:`compile_rankers` made one (the same scores)."""
        if len(X) == 0:
            return np.zeros(0)
        booster = self.boosters[task]
        compiled = self.compiled.get(task)
        if compiled is not None and compiled.booster is booster and num_threads == 1:
            return compiled.predict(X)
        return np.asarray(booster.predict(X, num_threads=num_threads))

    def compile_rankers(self, *, cache_dir: str | Path | None = None) -> list[str]:
        """Compile the rankers of the served tasks to machine code (lleaves), for serving.

        Each compiled forest is checked to score bit-identically to LightGBM
        (:func:`features.compiled.compile_ranker`); a task whose forest cannot be compiled
        keeps LightGBM, with a warning. Takes seconds per ranker unless ``cache_dir`` holds
        the machine code from an earlier run.

        Returns:
            The tasks now scored by a compiled forest.
        """
        for task, booster in self.boosters.items():
            if self.policy(task) != RANKER:
                continue
            try:
                self.compiled[task] = compile_ranker(
                    booster, cache_dir=None if cache_dir is None else Path(cache_dir)
                )
            except CompileError as exc:
                log.warning("%s ranker stays on LightGBM: %s", task, exc)
        return sorted(self.compiled)

    def score(self, fm: FeatureMatrix, task: str) -> np.ndarray:
        """Scores of the task's served policy (its ranker, or the chosen baseline)."""
        baseline = _parse_policy(self.policy(task))
        if baseline is None:
            return self.ranker_score(fm.X, task)
        score = get_task(task).baseline(baseline).score(fm.X, fm.columns, self.snapshot.config)
        # candidates the baseline cannot score rank last, with a finite score (JSON-safe)
        finite = np.isfinite(score)
        floor = float(score[finite].min()) - 1.0 if finite.any() else 0.0
        return np.where(finite, score, floor)

    def rank(self, batch: QueryBatch, k: np.ndarray) -> tuple[FeatureMatrix, np.ndarray, Selection]:
        """Candidates, scores and the guardrailed selection of a batch."""
        fm = build_features(batch, self.snapshot)
        sc = self.score(fm, batch.task)
        return fm, sc, apply_guardrails(batch, self.snapshot, fm, sc, k)

    def popular_fallback(self, customer: int, exclude: set[int], k: int) -> list[int]:
        """Segment (or global) most popular in-stock products, for cold starts (the caller
        applies the task's guardrails to them: a fallback obeys the same business rules)."""
        snap = self.snapshot
        if customer >= 0:
            cols, vals = snap.top.segment_top.row(int(snap.customers.segment[customer]))
            order = cols[np.lexsort((cols, -vals))]
        else:
            order = snap.top.global_top
        stock = snap.products.in_stock
        return [int(p) for p in order if int(p) not in exclude and stock[int(p)]][:k]

    def request_batch(
        self,
        *,
        task: str,
        customer_id: str,
        placement: str,
        product_id: str | None,
        cart: list[str],
        as_of: pd.Timestamp | None = None,
        live: LiveActivity = NO_ACTIVITY,
    ) -> QueryBatch:
        """The one-query batch of a request: default context, the ``as_of`` policy and the
        customer's live activity applied."""
        return single_query(
            self.snapshot,
            task=task,
            customer_id=customer_id,
            placement=placement,
            anchor_product_id=product_id,
            cart_product_ids=default_context(
                self.snapshot, customer_id, placement, product_id, cart, live
            ),
            as_of=resolve_as_of(self.snapshot, as_of),
            live=live,
        )

    def recommend_one(
        self,
        *,
        customer_id: str,
        placement: str,
        product_id: str | None,
        cart: list[str],
        k: dict[str, int],
        as_of: pd.Timestamp | None = None,
        live: LiveActivity = NO_ACTIVITY,
    ) -> dict[str, QueryResult]:
        """Recommendations for one request, per task of the placement (the online path).

        Args:
            customer_id: The customer (unknown ids are served and flagged ``fallback``).
            placement: One of ``schema.PLACEMENTS``.
            product_id: The viewed product (anchor), if any.
            cart: Product ids in the cart (post purchase: the order; empty: the last order).
            k: Task -> number of items wanted (0 or absent skips the task).
            as_of: Request time; default the snapshot cut-off (see :func:`resolve_as_of`).
            live: The customer's activity after the snapshot (:func:`features.live.live_activity`).
        """
        out: dict[str, QueryResult] = {}
        for task in tasks_at(placement):
            want = int(k.get(task.name, 0))
            if want <= 0 or task.name not in {t.name for t in self.tasks}:
                continue
            if task.needs_anchor and product_id is None:
                continue
            batch = self.request_batch(
                task=task.name,
                customer_id=customer_id,
                placement=placement,
                product_id=product_id,
                cart=cart,
                as_of=as_of,
                live=live,
            )
            out[task.name] = self._one(task, batch, want)
        return out

    def _items(
        self, batch: QueryBatch, fm: FeatureMatrix, sc: np.ndarray, rows: np.ndarray
    ) -> list[Recommendation]:
        price = self.snapshot.products.price
        return [
            Recommendation(
                product_id=str(self.snapshot.product_ids[fm.product[r]]),
                score=float(sc[r]),
                price=float(price[fm.product[r]]),
                reason=why,
            )
            for r, why in zip(rows.tolist(), reasons(batch, self.snapshot, fm, rows), strict=True)
        ]

    def _one(self, task: Task, batch: QueryBatch, k: int) -> QueryResult:
        fm, sc, sel = self.rank(batch, np.asarray([k]))
        snap = self.snapshot
        warnings = [f"unknown product id {p!r}" for p in batch.unknown_products[0]]
        items = self._items(batch, fm, sc, sel.rows)
        fallback = bool(batch.customer[0] < 0)
        if not items and task.popular_fallback:
            popular = np.asarray(
                self.popular_fallback(
                    int(batch.customer[0]), set(batch.context.tolist()), len(snap.product_ids)
                ),
                dtype=np.int64,
            )
            rules = (*task.eligibility, *task.guardrails)  # the same rules as any candidate
            ok = all_of(rules, batch, snap, np.zeros(len(popular), dtype=np.int64), popular)
            picks = popular[ok][:k].tolist()
            price = snap.products.price
            items = [
                Recommendation(str(snap.product_ids[p]), 0.0, float(price[p]), POPULAR_REASON)
                for p in picks
            ]
            fallback = fallback or bool(items)
        return QueryResult(items, fallback, self.policy(task.name), warnings)

    def score_products(
        self,
        *,
        task: str,
        customer_id: str,
        placement: str,
        product_id: str | None,
        cart: list[str],
        products: list[str],
        as_of: pd.Timestamp | None = None,
        live: LiveActivity = NO_ACTIVITY,
    ) -> QueryResult:
        """Score a caller-supplied product list for one query (``POST /rank``), best first.

        The features come from ``features_for_candidates`` on the given products; source
        columns are NaN for products no candidate source proposes. No guardrail filters the
        list; unknown product ids are reported in ``warnings``.
        """
        batch = self.request_batch(
            task=task,
            customer_id=customer_id,
            placement=placement,
            product_id=product_id,
            cart=cart,
            as_of=as_of,
            live=live,
        )
        index = self.snapshot.product_index
        known = list(dict.fromkeys(p for p in products if p in index))
        missing = list(dict.fromkeys(p for p in products if p not in index))
        warnings = [f"unknown product id {p!r}" for p in (*batch.unknown_products[0], *missing)]
        positions = np.asarray([index[p] for p in known], dtype=np.int64)
        cands = candidates_for_products(
            batch, self.snapshot, np.zeros(len(positions), dtype=np.int64), positions
        )
        fm = features_for_candidates(batch, self.snapshot, cands)
        sc = self.score(fm, task)
        rows = np.argsort(-sc, kind="stable")
        proposed = ~np.isnan(cands.ranks).all(axis=1) if len(cands) else np.zeros(0, dtype=bool)
        items = [
            item
            if proposed[r]
            else Recommendation(item.product_id, item.score, item.price, RANKED_ON_REQUEST)
            for r, item in zip(rows.tolist(), self._items(batch, fm, sc, rows), strict=True)
        ]
        return QueryResult(items, bool(batch.customer[0] < 0), self.policy(task), warnings)

    def recommend(self, queries: pd.DataFrame) -> pd.DataFrame:
        """Batch scoring (``xsell recommend``): one output row per recommended product.

        Args:
            queries: ``query_id, customer_id, placement, anchor_product_id,
                cart_product_ids, as_of, k``.

        Returns:
            ``query_id, task, rank, product_id, score`` (the tasks of each placement).

        Raises:
            ValueError: A missing column or an unknown placement.
            AsOfError: A query earlier than the snapshot (named in the message).
        """
        if K not in queries.columns:
            raise ValueError("queries: missing column 'k'")
        unknown = sorted(set(queries[PLACEMENT]) - set(s.PLACEMENTS), key=str)
        if unknown:
            raise ValueError(f"queries.placement: unknown placement(s) {unknown[:5]}")
        as_of = pd.to_datetime(queries[AS_OF])
        early = (as_of < self.snapshot.as_of_timestamp).to_numpy()
        if early.any():
            ids = queries.loc[early, QUERY_ID].astype(str).head(5).tolist()
            raise AsOfError(
                f"queries {ids} have as_of before the model's data (snapshot "
                f"{self.snapshot.as_of_timestamp}); refused: they would be scored with later data"
            )
        frames = []
        for task in self.tasks:
            sub = queries.loc[queries[PLACEMENT].isin(list(task.placements))]
            if task.needs_anchor:
                sub = sub.loc[sub[ANCHOR].notna()]
            if len(sub) == 0:
                continue
            sub = self._with_default_context(sub.reset_index(drop=True))
            batch = batch_from_frame(sub, self.snapshot, task=task.name)
            fm, sc, sel = self.rank(batch, sub[K].to_numpy(dtype=np.int64))
            frames.append(
                pd.DataFrame(
                    {
                        "query_id": batch.query_ids[fm.query[sel.rows]],
                        "task": task.name,
                        "rank": sel.rank,
                        "product_id": self.snapshot.product_ids[fm.product[sel.rows]],
                        "score": sc[sel.rows],
                    }
                )
            )
        if not frames:
            return pd.DataFrame(columns=list(OUTPUT_COLUMNS))
        out = pd.concat(frames, ignore_index=True)
        return out.sort_values([QUERY_ID, "task", "rank"], kind="stable").reset_index(drop=True)

    def _with_default_context(self, queries: pd.DataFrame) -> pd.DataFrame:
        """Queries with :func:`default_context` applied (post purchase without a cart)."""
        pp = queries[PLACEMENT].to_numpy() == POST_PURCHASE
        if not pp.any():
            return queries
        carts = queries[CART].to_numpy(dtype=object).copy()
        anchors = queries[ANCHOR].to_numpy(dtype=object)
        customers = queries[s.CUSTOMER_ID].astype(str).to_numpy(dtype=object)
        for i in np.flatnonzero(pp):
            anchor = anchors[i] if isinstance(anchors[i], str) else None
            cart = [] if carts[i] is None or isinstance(carts[i], float) else list(carts[i])
            carts[i] = default_context(self.snapshot, customers[i], POST_PURCHASE, anchor, cart)
        return queries.assign(**{CART: carts})

    def save(self, folder: str | Path) -> Path:
        """Write ``meta.json``, ``<task>.txt`` boosters and ``snapshot/``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.snapshot.save(folder / SNAPSHOT_DIR)
        (folder / SNAPSHOT_POINTER).unlink(missing_ok=True)
        for task, booster in self.boosters.items():
            booster.save_model(str(folder / f"{task}.txt"))
        tasks = [t.name for t in self.tasks]
        meta = {
            **self.meta,
            "format_version": MODEL_FORMAT_VERSION,
            "tasks": tasks,
            "rankers": sorted(self.boosters),
            "policies": {t: self.policy(t) for t in tasks},
            "feature_columns": {t: self.columns(t) for t in tasks},
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> XsellModel:
        """Read a folder written by :meth:`save`.

        Raises:
            ModelLoadError: Missing or corrupt files, or feature columns that do not match.
        """
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read model metadata in {folder}: {exc}") from exc
        if not isinstance(meta, dict):
            raise ModelLoadError(f"model metadata in {folder} is not a JSON object")
        if meta.get("format_version") != MODEL_FORMAT_VERSION:
            raise OutdatedModelError(
                f"model format {meta.get('format_version')} is not supported "
                f"(this code reads format {MODEL_FORMAT_VERSION}; retrain with xsell train)"
            )
        if not isinstance(meta.get("rankers"), list) or not isinstance(meta.get("policies"), dict):
            raise ModelLoadError(f"model metadata in {folder} lists no rankers or policies")
        try:
            snapshot = FeatureSnapshot.load(current_snapshot(folder))
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        boosters = {}
        for task in meta["rankers"]:
            try:
                boosters[task] = lgb.Booster(model_file=str(folder / f"{task}.txt"))
            except lgb.basic.LightGBMError as exc:
                raise ModelLoadError(f"cannot load the {task} ranker: {exc}") from exc
        _check_columns(boosters, snapshot)
        policies = {str(k): str(v) for k, v in meta["policies"].items()}
        model = cls(snapshot=snapshot, boosters=boosters, policies=policies, meta=meta)
        try:
            model.check_policies()
        except ValueError as exc:
            raise ModelLoadError(f"model in {folder}: {exc}") from exc
        return model

    def check_policies(self) -> None:
        """Every served policy is a declared baseline of its task, or a ranker the bundle has.

        Raises:
            ValueError: The first policy that cannot be served.
        """
        for task, policy in self.policies.items():
            baseline = _parse_policy(policy)
            if baseline is not None:
                get_task(task).baseline(baseline)
            elif task not in self.boosters:
                raise ValueError(f"{task} is served by its ranker but the bundle has none")


def _check_columns(boosters: dict[str, lgb.Booster], snapshot: FeatureSnapshot) -> None:
    for task, booster in boosters.items():
        if booster.feature_name() != [c.replace(" ", "_") for c in feature_columns(snapshot, task)]:
            raise OutdatedModelError(
                f"{task} ranker's features do not match the snapshot (trained by other feature "
                "code; retrain with xsell train)"
            )


def current_snapshot(folder: str | Path) -> Path:
    """The snapshot folder a model folder serves now (the refreshed one, if any)."""
    folder = Path(folder)
    pointer = folder / SNAPSHOT_POINTER
    name = pointer.read_text().strip() if pointer.is_file() else SNAPSHOT_DIR
    return folder / name


def snapshot_stamp(folder: str | Path) -> str:
    """What changes when the served snapshot changes (cheap: one small file read)."""
    pointer = Path(folder) / SNAPSHOT_POINTER
    return pointer.read_text().strip() if pointer.is_file() else SNAPSHOT_DIR


def refresh_snapshot(folder: str | Path, model: XsellModel, snapshot: FeatureSnapshot) -> Path:
    """Make ``snapshot`` the one the model folder serves, for the same rankers.

    Args:
        folder: The model folder.
        model: The bundle loaded from ``folder`` (its rankers and config are checked).
        snapshot: The new snapshot.

    It is written beside the current one and the pointer file is replaced atomically; a running
    service polls the pointer and swaps the snapshot in without a restart. Older refreshed
    snapshots beyond :data:`KEEP_SNAPSHOTS` are deleted.

    Raises:
        ModelLoadError: The new snapshot's config or feature columns differ from the rankers'
            (new persona columns or levels: retrain instead).
    """
    folder = Path(folder)
    if snapshot.config != model.snapshot.config:
        raise ModelLoadError("the new snapshot's feature config differs from the model's")
    _check_columns(model.boosters, snapshot)
    stamp = pd.Timestamp.now("UTC").strftime("%Y%m%dT%H%M%S%f")
    name = f"{SNAPSHOT_DIR}-{stamp}"
    snapshot.save(folder / name)
    tmp = folder / f".{SNAPSHOT_POINTER}.tmp"
    tmp.write_text(name)
    tmp.replace(folder / SNAPSHOT_POINTER)
    refreshed = sorted(folder.glob(f"{SNAPSHOT_DIR}-*"))
    for old in refreshed[:-KEEP_SNAPSHOTS]:
        shutil.rmtree(old, ignore_errors=True)
    return folder / name

"""The trained model: one LightGBM ranker per task, the feature snapshot and the guardrails.

:class:`XsellModel` is what MLflow stores (as the folder written by :meth:`XsellModel.save`,
wrapped by :class:`XsellPyfunc`), what ``xsell recommend`` scores batches with and what the
BentoML service loads. All candidate and feature logic is called from ``features/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.batch import (
    ANCHOR,
    CART,
    PLACEMENT,
    QUERY_ID,
    K,
    QueryBatch,
    batch_from_frame,
    single_query,
)
from features.candidates import candidates_for_products
from features.data import schema as s
from features.guardrails import apply_guardrails, reasons
from features.matrix import FeatureMatrix, build_features, feature_columns, features_for_candidates
from features.snapshot import FeatureSnapshot, to_days

MODEL_FORMAT_VERSION = 1
OUTPUT_COLUMNS = ("query_id", "task", "rank", "product_id", "score")
# Which tasks each placement asks for (DESIGN.md placement defaults).
PLACEMENT_TASKS = {
    "product_page": (s.UPSELL, s.CROSS_SELL),
    "cart": (s.CROSS_SELL,),
    "checkout": (s.CROSS_SELL,),
    "post_purchase": (s.CROSS_SELL,),
}
POST_PURCHASE = "post_purchase"
RANKED_ON_REQUEST = "ranked for you"


class ModelLoadError(ValueError):
    """A model folder is missing, corrupt or of another format version."""


@dataclass(frozen=True)
class Recommendation:
    """One recommended product."""

    product_id: str
    score: float
    price: float
    reason: str


@dataclass(frozen=True)
class QueryResult:
    """Recommendations of one query and task, with the fallback flag and warnings."""

    items: list[Recommendation]
    fallback: bool
    warnings: list[str] = field(default_factory=list)


@dataclass
class XsellModel:
    """Both task rankers with the snapshot they were trained against.

    Attributes:
        snapshot: Features as of the end of training data.
        boosters: Task -> LightGBM booster.
        meta: Training facts (version, data range, metrics, feature columns).
    """

    snapshot: FeatureSnapshot
    boosters: dict[str, lgb.Booster]
    meta: dict[str, Any] = field(default_factory=dict)

    def columns(self, task: str) -> list[str]:
        """Feature columns the ranker of ``task`` expects."""
        return feature_columns(self.snapshot, task)

    def score(self, fm: FeatureMatrix, task: str) -> np.ndarray:
        """Ranker scores of a feature matrix (one thread, NumPy input: the serving path)."""
        if len(fm) == 0:
            return np.zeros(0)
        return self.boosters[task].predict(fm.X, num_threads=1)

    def rank(self, batch: QueryBatch, k: np.ndarray) -> tuple[FeatureMatrix, np.ndarray, Any]:
        """Candidates, scores and the guardrailed selection of a batch."""
        fm = build_features(batch, self.snapshot)
        sc = self.score(fm, batch.task)
        return fm, sc, apply_guardrails(batch, self.snapshot, fm, sc, k)

    def popular_fallback(self, customer: int, exclude: set[int], k: int) -> list[int]:
        """Segment (or global) most popular in-stock products, for cold starts."""
        a = self.snapshot.arrays
        if customer >= 0:
            row = int(a["segment"][customer])
            cols, vals = self.snapshot.lookups["segment_top"].row(row)
            order = cols[np.lexsort((cols, -vals))]
        else:
            order = a["global_top"]
        out = [int(p) for p in order if int(p) not in exclude and a["in_stock"][int(p)]]
        return out[:k]

    def recommend_one(
        self,
        *,
        customer_id: str,
        placement: str,
        product_id: str | None,
        cart: list[str],
        k: dict[str, int],
        as_of: pd.Timestamp | None = None,
    ) -> dict[str, QueryResult]:
        """Recommendations for one request, per task of the placement (the online path).

        Args:
            customer_id: The customer (unknown ids get popularity with ``fallback``).
            placement: One of ``schema.PLACEMENTS``.
            product_id: The viewed product (anchor), if any.
            cart: Product ids in the cart (or the last order, post purchase; empty: the
                customer's most recent order in the snapshot).
            k: Task -> number of items wanted (0 skips the task).
            as_of: Request time; default the snapshot cut-off.
        """
        out: dict[str, QueryResult] = {}
        for task in PLACEMENT_TASKS[placement]:
            want = int(k.get(task, 0))
            if want <= 0:
                continue
            batch = self.request_batch(
                task=task,
                customer_id=customer_id,
                placement=placement,
                product_id=product_id,
                cart=cart,
                as_of=as_of,
            )
            out[task] = self._one(batch, want)
        return out

    def request_batch(
        self,
        *,
        task: str,
        customer_id: str,
        placement: str,
        product_id: str | None,
        cart: list[str],
        as_of: pd.Timestamp | None,
    ) -> QueryBatch:
        """The one-query batch of a request: default context, time clamped to the cut-off."""
        now = self.snapshot.as_of if as_of is None else max(to_days(as_of), self.snapshot.as_of)
        return single_query(
            self.snapshot,
            task=task,
            customer_id=customer_id,
            placement=placement,
            anchor_product_id=product_id,
            cart_product_ids=self.default_context(customer_id, placement, product_id, cart),
            as_of=now,
        )

    def default_context(
        self, customer_id: str, placement: str, product_id: str | None, cart: list[str]
    ) -> list[str]:
        """The cart, or post purchase without cart or product, the customer's last order."""
        if placement != POST_PURCHASE or cart or product_id is not None:
            return cart
        last = self.snapshot.last_order(self.snapshot.customer_index.get(customer_id, -1))
        return self.snapshot.product_ids[last].tolist()

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
    ) -> QueryResult:
        """Score a caller-supplied product list for one query (``POST /rank``), best first.

        The features come from ``features.matrix.features_for_candidates`` on the given products;
        source columns are NaN for products no candidate source proposes. No guardrail filters
        the list; unknown product ids are reported in ``warnings``.
        """
        batch = self.request_batch(
            task=task,
            customer_id=customer_id,
            placement=placement,
            product_id=product_id,
            cart=cart,
            as_of=as_of,
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
        why = reasons(batch, self.snapshot, fm, rows)
        price = self.snapshot.arrays["price"]
        items = [
            Recommendation(
                product_id=str(self.snapshot.product_ids[fm.product[r]]),
                score=float(sc[r]),
                price=float(price[fm.product[r]]),
                reason=w if proposed[r] else RANKED_ON_REQUEST,
            )
            for r, w in zip(rows.tolist(), why, strict=True)
        ]
        return QueryResult(items, bool(batch.customer[0] < 0), warnings)

    def _one(self, batch: QueryBatch, k: int) -> QueryResult:
        fm, sc, sel = self.rank(batch, np.asarray([k]))
        snap = self.snapshot
        price = snap.arrays["price"]
        warnings = [f"unknown product id {p!r}" for p in batch.unknown_products[0]]
        unknown_customer = bool(batch.customer[0] < 0)
        items = [
            Recommendation(
                product_id=str(snap.product_ids[fm.product[r]]),
                score=float(sc[r]),
                price=float(price[fm.product[r]]),
                reason=why,
            )
            for r, why in zip(sel.rows, reasons(batch, snap, fm, sel.rows), strict=True)
        ]
        fallback = unknown_customer
        if not items and batch.task == s.CROSS_SELL:
            exclude = set(batch.context.tolist())
            picks = self.popular_fallback(int(batch.customer[0]), exclude, k)
            items = [
                Recommendation(str(snap.product_ids[p]), 0.0, float(price[p]), "popular right now")
                for p in picks
            ]
            fallback = True
        return QueryResult(items, fallback, warnings)

    def recommend(self, queries: pd.DataFrame) -> pd.DataFrame:
        """Batch scoring (``xsell recommend``): one output row per recommended product.

        Args:
            queries: ``query_id, customer_id, placement, anchor_product_id,
                cart_product_ids, as_of, k``.

        Returns:
            ``query_id, task, rank, product_id, score`` (the tasks of each placement).
        """
        if K not in queries.columns:
            raise ValueError("queries: missing column 'k'")
        unknown = sorted(set(queries["placement"]) - set(PLACEMENT_TASKS), key=str)
        if unknown:
            raise ValueError(f"queries.placement: unknown placement(s) {unknown[:5]}")
        frames = []
        for task in (s.CROSS_SELL, s.UPSELL):
            wants = queries["placement"].map(lambda p, t=task: t in PLACEMENT_TASKS.get(p, ()))
            sub = queries.loc[wants.astype(bool)].reset_index(drop=True)
            if task == s.UPSELL:
                sub = sub.loc[sub["anchor_product_id"].notna()].reset_index(drop=True)
            if len(sub) == 0:
                continue
            sub = self._with_default_context(sub)
            as_of = pd.to_datetime(sub["as_of"])
            sub = sub.assign(
                as_of=as_of.where(
                    as_of >= self.snapshot.as_of_timestamp, self.snapshot.as_of_timestamp
                )
            )
            batch = batch_from_frame(sub, self.snapshot, task=task)
            fm, sc, sel = self.rank(batch, sub[K].to_numpy(dtype=np.int64))
            frames.append(
                pd.DataFrame(
                    {
                        "query_id": batch.query_ids[fm.query[sel.rows]],
                        "task": task,
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
        """Queries with :meth:`default_context` applied (post purchase without a cart)."""
        pp = queries[PLACEMENT].to_numpy() == POST_PURCHASE
        if not pp.any():
            return queries
        carts = queries[CART].to_numpy(dtype=object).copy()
        anchors = queries[ANCHOR].to_numpy(dtype=object)
        customers = queries[s.CUSTOMER_ID].astype(str).to_numpy(dtype=object)
        for i in np.flatnonzero(pp):
            anchor = anchors[i] if isinstance(anchors[i], str) else None
            cart = [] if carts[i] is None or isinstance(carts[i], float) else list(carts[i])
            carts[i] = self.default_context(customers[i], POST_PURCHASE, anchor, cart)
        return queries.assign(**{CART: carts})

    def save(self, folder: str | Path) -> Path:
        """Write ``meta.json``, ``<task>.txt`` boosters and ``snapshot/``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.snapshot.save(folder / "snapshot")
        for task, booster in self.boosters.items():
            booster.save_model(str(folder / f"{task}.txt"))
        meta = {**self.meta, "format_version": MODEL_FORMAT_VERSION, "tasks": sorted(self.boosters)}
        meta["feature_columns"] = {t: self.columns(t) for t in self.boosters}
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
            raise ModelLoadError(f"model format {meta.get('format_version')} is not supported")
        if not isinstance(meta.get("tasks"), list):
            raise ModelLoadError(f"model metadata in {folder} lists no tasks")
        try:
            snapshot = FeatureSnapshot.load(folder / "snapshot")
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        boosters = {}
        for task in meta["tasks"]:
            try:
                boosters[task] = lgb.Booster(model_file=str(folder / f"{task}.txt"))
            except lgb.basic.LightGBMError as exc:
                raise ModelLoadError(f"cannot load the {task} ranker: {exc}") from exc
            if boosters[task].feature_name() != [
                c.replace(" ", "_") for c in feature_columns(snapshot, task)
            ]:
                raise ModelLoadError(f"{task} ranker's features do not match the snapshot")
        return cls(snapshot=snapshot, boosters=boosters, meta=meta)


def load_model(uri: str, *, dst_path: str | Path | None = None) -> XsellModel:
    """Load from a local folder or an MLflow URI (``models:/xsell-ranker@champion``, ``runs:/``).

    Args:
        uri: A model folder or an MLflow model URI.
        dst_path: Where MLflow downloads the artifacts (default: a new temporary folder); the
            loaded model is fully in memory, so the caller may delete it afterwards.
    """
    path = Path(uri)
    if path.is_dir():
        return XsellModel.load(path)
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri.rstrip("/"), dst_path=None if dst_path is None else str(dst_path)
        )
    except Exception as exc:  # MLflow raises several types for a bad URI
        raise ModelLoadError(f"cannot fetch model {uri}: {exc}") from exc
    candidates = [Path(local), *Path(local).rglob("meta.json")]
    for c in candidates:
        folder = c if c.is_dir() else c.parent
        if (folder / "meta.json").exists() and (folder / "snapshot").is_dir():
            return XsellModel.load(folder)
    raise ModelLoadError(f"no xsell model folder inside {uri}")


def _pyfunc_base() -> type:
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class XsellPyfunc(_pyfunc_base()):  # type: ignore[misc]
    """MLflow pyfunc wrapper: ``predict`` is batch scoring with ``xsell recommend``'s columns."""

    def load_context(self, context: Any) -> None:
        """Load the model folder stored as the ``model_dir`` artifact."""
        self.model = XsellModel.load(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """Score a query frame; see :meth:`XsellModel.recommend`."""
        return self.model.recommend(model_input)

"""The xsell prediction API: a BentoML 1.4 service around one :class:`XsellModel` version.

The model (both rankers and the feature snapshot they were trained with) is loaded once per
worker in ``__init__`` from :func:`default_model_uri`: ``$XSELL_MODEL_URI`` (a model folder or an
MLflow URI of the local store), else the bundled ``bento_model/`` folder inside a bento, else
``models:/xsell-ranker@champion``. Every API method validates the request with pydantic and makes
one call into the model: candidates, features, scores, guardrails and reasons all come from
``features/`` through ``XsellModel``, the same code as training and ``xsell recommend``.

Endpoints (JSON bodies are the request objects themselves, fields at the top level):

- ``POST /recommend`` -> :class:`RecommendResponse`
- ``POST /rank`` -> :class:`RankResponse`: scores a caller-supplied product list with the
  task's ranker (no guardrail removes anything; source features are NaN for products no
  candidate source proposes)
- ``POST /events`` -> :class:`serving.live.StoredResponse`: live purchases, views and cart
  changes (:mod:`serving.live`), stored durably before the answer and used by the next request
- ``POST /feedback``: impressions, clicks, adds and purchases against a ``recommendation_id``
- ``GET /healthz`` (alive): BentoML's probe; ``GET /readyz``: 200 when a model is loaded, with
  what is degraded (the event store down or full: answers come from the snapshot alone)
- ``GET /model``: version, run id, training data range, headline metrics
- ``GET /docs.json``: the OpenAPI document, every answer declared (:mod:`serving.openapi`)

Bad input answers 400 (pydantic errors name the field in ``detail[].loc`` or the message),
413 (body over :data:`MAX_BODY_BYTES`) or 415 (a body that is not JSON); unknown customers and
products are not errors (``fallback`` and ``warnings``). A rejected request logs one line, no
traceback (:mod:`serving.logs`); the per-request access log is off unless ``--access-log``.

Each worker scores with its rankers compiled to machine code (:func:`load_worker_model`; the
same scores as LightGBM). The API methods are ``async`` on purpose: a request is ~2 ms of CPU-bound NumPy/LightGBM work
that would gain nothing from a thread, and BentoML's thread hand-off (with the GIL held by the
worker thread) cost ~2 ms of latency per request. Scale out with workers (``xsell serve
--workers``), one model copy each.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from anyio import to_thread
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from features.data import schema as s
from features.live import NO_ACTIVITY, LiveActivity, live_activity
from features.recommend import QueryResult, placement_defaults
from features.tasks import get_task, task_names, tasks_at
from online.experiments import Experiment, load_experiment, single_variant
from online.records import RecommendationRecord, RecommendedItem
from online.store import EventStore, SchemaVersionError, StoreError
from serving.live import (
    EventsRequest,
    FeedbackRequest,
    StoredResponse,
    check_references,
    shop_time,
)
from serving.logs import log_rejected, quiet_client_errors
from serving.openapi import openapi_document
from serving.preview import preview_page  # GET /preview (HTML page)
from serving.runtime import RecommendationLog, ServedVariant, StoreHandle, Variants
from training.model import XsellModel, export_model, load_serving_model

log = logging.getLogger(__name__)

MODEL_URI_ENV = "XSELL_MODEL_URI"
WORKERS_ENV = "XSELL_WORKERS"
ACCESS_LOG_ENV = "XSELL_ACCESS_LOG"  # "1": BentoML logs one line per request
# "1": BentoML's OpenTelemetry spans on every request (for a configured exporter); otherwise
# every route is excluded: five spans per request that nothing exports were the largest cost
# outside the model in a profile of /recommend.
TRACING_ENV = "XSELL_TRACING"
STORE_ENV = "XSELL_STORE"  # event store: a folder (SQLite) or a SQLAlchemy URL
DEFAULT_STORE = "xsell-store"
# The experiment as `xsell serve` resolved it for the workers: every variant's model folder.
VARIANTS_ENV = "XSELL_VARIANTS"
RELOAD_ENV = "XSELL_RELOAD_SECONDS"  # how often workers look for a refreshed snapshot
# "0": score with LightGBM's own predict; otherwise each worker compiles its rankers (lleaves,
# checked to give LightGBM's scores) and keeps the machine code in $XSELL_FOREST_CACHE.
COMPILED_ENV = "XSELL_COMPILED"
FOREST_CACHE_ENV = "XSELL_FOREST_CACHE"
DEFAULT_FOREST_CACHE = Path(tempfile.gettempdir()) / "xsell-forests"
DEFAULT_MODEL_URI = "models:/xsell-ranker@champion"
# The folder `xsell export-model` writes and bentofile.yaml packages into a bento.
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "bento_model"
MAX_K = 50
MAX_CART = 200
MAX_ID_LENGTH = 128
MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_BYTES = 1024 * 1024  # POST /events and /feedback: up to 1,000 rows
BATCH_ROUTES = ("/events", "/feedback")

Placement = Literal[s.PLACEMENTS]  # type: ignore[valid-type]
Task = Literal[task_names()]  # type: ignore[valid-type]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
Ids = Annotated[list[Id], Field(max_length=MAX_CART)]
ItemCount = Annotated[int | None, Field(ge=0, le=MAX_K)]


class _Request(BaseModel):
    """Fields shared by every query: who, where, and the context."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    customer_id: Id = Field(description="Customer id; unknown ids get popular products.")
    placement: Placement = Field(description="Where the list is shown.")
    product_id: Id | None = Field(
        None, description="The viewed product (required on a product page)."
    )
    cart: Ids = Field(
        default_factory=list,
        description="Product ids in the cart (post_purchase: the order; empty: the last order).",
    )


def _placements_doc(task: str) -> str:
    defaults = {p: placement_defaults(p).get(task, 0) for p in s.PLACEMENTS}
    return ", ".join(f"{p} {k}" for p, k in defaults.items() if k)


class _RecommendBase(_Request):
    """``POST /recommend``: every task of the placement for one customer.

    ``k_<task>`` is 0..50 (0 skips the task) and defaults per placement (declared with each
    task); at least one task of the placement must ask for an item. Upsells need a viewed
    product, so only ``product_page`` has them.
    """

    @model_validator(mode="after")
    def _consistent(self) -> _RecommendBase:
        if self.placement == "product_page" and self.product_id is None:
            raise ValueError("product_id is required when placement is 'product_page'")
        if not any(self.wanted().values()):
            fields = " / ".join(f"k_{t.name}" for t in tasks_at(self.placement))
            raise ValueError(f"{fields}: ask for at least one item at {self.placement!r}")
        return self

    def notes(self) -> list[str]:
        """Warnings about request fields that the placement ignores."""
        served = {t.name for t in tasks_at(self.placement)}
        return [
            f"k_{task} ignored: {task} is not offered at {self.placement}"
            for task in task_names()
            if getattr(self, f"k_{task}") and task not in served
        ]

    def wanted(self) -> dict[str, int]:
        """Task -> items wanted, for the tasks of the placement."""
        default = placement_defaults(self.placement)
        out = {}
        for task in default:
            given = getattr(self, f"k_{task}")
            out[task] = default[task] if given is None else given
        return out


# One ``k_<task>`` field per declared task (the task registry is the one declaration).
RecommendRequest = create_model(  # type: ignore[call-overload]  # TypeForm fields
    "RecommendRequest",
    __base__=_RecommendBase,
    __doc__=_RecommendBase.__doc__,
    **{
        f"k_{task}": (
            ItemCount,
            Field(
                None, description=f"{task} items wanted (0..50; defaults: {_placements_doc(task)})."
            ),
        )
        for task in task_names()
    },
)


class RankRequest(_Request):
    """``POST /rank``: score a caller-supplied product list for one customer and context."""

    task: Task = Field(  # type: ignore[valid-type]  # a Literal built at import
        s.CROSS_SELL, description="Which task's served policy scores the list."
    )
    products: Annotated[list[Id], Field(min_length=1, max_length=MAX_CART)] = Field(
        description="Product ids to rank (1..200)."
    )

    @model_validator(mode="after")
    def _anchor_when_needed(self) -> RankRequest:
        if get_task(self.task).needs_anchor and self.product_id is None:
            raise ValueError(f"product_id is required when task is {self.task!r}")
        return self


class Item(BaseModel):
    """One recommended product, at ``position`` (1 = first) of its task's list."""

    product_id: str
    score: float
    price: float
    reason: str
    position: int = 1


class _RecommendResponseBase(BaseModel):
    """One list per task (best first; empty when not asked for), the served policy per task,
    the model version and flags."""

    recommendation_id: str = Field(
        description="Report impressions, clicks and purchases against it (POST /feedback)."
    )
    variant: str = Field(description="The experiment variant that served this customer.")
    model_version: str
    policies: dict[str, str] = Field(
        description="Task -> served policy: 'ranker' or 'baseline:<name>' (the heuristic that "
        "beat the ranker on the holdout)."
    )
    fallback: bool = Field(description="Popularity was used (unknown customer, cold start).")
    degraded: list[str] = Field(
        default_factory=list,
        description="What could not be used (the event store): the answer is the snapshot's.",
    )
    warnings: list[str]


RecommendResponse = create_model(  # type: ignore[call-overload]  # TypeForm fields
    "RecommendResponse",
    __base__=_RecommendResponseBase,
    __doc__=_RecommendResponseBase.__doc__,
    **{task: (list[Item], Field(default_factory=list)) for task in task_names()},
)


class RankResponse(BaseModel):
    """The given products that the model knows, best first, with their scores."""

    task: str
    policy: str
    items: list[Item]
    model_version: str
    fallback: bool
    warnings: list[str]


EXAMPLE_REQUEST: dict[str, Any] = {
    "customer_id": "C0000001",
    "placement": "product_page",
    "product_id": "P00002",
    "cart": [],
    "k_cross_sell": 2,
    "k_upsell": 3,
}


# --------------------------------------------------------------------------- model loading


def default_model_uri() -> str:
    """``$XSELL_MODEL_URI``, else the bundled ``bento_model/`` folder (in a bento), else the
    champion of the local MLflow store."""
    if uri := os.environ.get(MODEL_URI_ENV):
        return uri
    return str(BUNDLED_MODEL) if BUNDLED_MODEL.is_dir() else DEFAULT_MODEL_URI


def serve(
    *,
    model: str | None,
    host: str,
    port: int,
    workers: int,
    access_log: bool = False,
    store: str | None = None,
    experiment: str | Path | None = None,
) -> None:
    """Run the service on ``host:port`` until interrupted (``xsell serve``).

    Args:
        model: Model folder or MLflow URI (default ``$XSELL_MODEL_URI``, else the champion).
        access_log: BentoML's one line per request (off by default: rejected requests still
            log one line each, see :mod:`serving.logs`).
        store: The event store (folder or SQLAlchemy URL; default ``$XSELL_STORE``, else
            ``./xsell-store``), created when missing.
        experiment: An experiment file (:mod:`online.experiments`); none: one variant.

    Every MLflow URI is resolved and downloaded once, here, into a temporary folder that every
    worker loads (and that is deleted on exit); a folder is served as it is, so
    ``xsell snapshot refresh`` on it reaches the running service.

    Raises:
        ExperimentConfigError: The experiment file is invalid.
        SchemaVersionError: The store is at another schema version (``xsell store migrate``).
    """
    uri = model or os.environ.get(MODEL_URI_ENV) or DEFAULT_MODEL_URI
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    split = load_experiment(experiment) if experiment else single_variant()
    location = store or os.environ.get(STORE_ENV) or DEFAULT_STORE
    try:
        EventStore.open(location).close()  # create it, or refuse an out-of-date one now
    except SchemaVersionError:
        raise
    except StoreError as exc:  # down: serve from the snapshot, retry later (degraded)
        log.error("event store unavailable, serving from the snapshot alone: %s", exc)
    with tempfile.TemporaryDirectory(prefix="xsell-serve-") as tmp:
        folders: dict[str, dict[str, str]] = {}
        by_uri: dict[str, dict[str, str]] = {}
        for variant in split.variants:
            source = variant.model or uri
            if source not in by_uri:
                if Path(source).is_dir():  # the workers load it and read its version
                    folder, version = Path(source).resolve(), ""
                else:
                    folder, version = export_model(source, Path(tmp) / f"model-{len(by_uri)}")
                by_uri[source] = {"folder": str(folder), "version": version}
            folders[variant.name] = by_uri[source]
        resolved = Path(tmp) / "variants.json"
        resolved.write_text(json.dumps({"experiment": split.model_dump(), "models": folders}))
        os.environ[MODEL_URI_ENV] = folders[split.control]["folder"]
        os.environ[VARIANTS_ENV] = str(resolved)
        os.environ[STORE_ENV] = location
        os.environ[WORKERS_ENV] = str(workers)
        # Workers import this module afresh: the service config reads the variables.
        os.environ[ACCESS_LOG_ENV] = "1" if access_log else "0"
        # @bentoml.service makes the class a Service; mypy ignores class decorators.
        XsellService.config["workers"] = workers  # type: ignore[attr-defined]
        XsellService.config["logging"] = _logging_config()  # type: ignore[attr-defined]
        XsellService.config["tracing"] = _tracing_config()  # type: ignore[attr-defined]
        XsellService.serve_http(host=host, port=port)  # type: ignore[attr-defined]


def load_worker_model(uri: str) -> tuple[XsellModel, str]:
    """One model version as a worker serves it: BLAS on one thread (:func:`single_thread_blas`),
    the model loaded, and its rankers compiled to machine code unless ``$XSELL_COMPILED`` is
    ``0`` (:meth:`XsellModel.compile_rankers`: the same scores as LightGBM, about 3x faster on
    one request's rows; a forest that cannot be compiled stays on LightGBM with a warning). The
    machine code is cached in ``$XSELL_FOREST_CACHE`` (default ``<tmp>/xsell-forests``), so only
    the first worker to start pays the seconds of compiling."""
    single_thread_blas()
    model, label = load_serving_model(uri)
    if os.environ.get(COMPILED_ENV, "1") != "0":
        cache = Path(os.environ.get(FOREST_CACHE_ENV) or DEFAULT_FOREST_CACHE)
        compiled = model.compile_rankers(cache_dir=cache)
        log.info("rankers compiled to machine code: %s", ", ".join(compiled) or "none")
    return model, label


def single_thread_blas() -> None:
    """Run BLAS on this thread only, for the rest of the process (a serving worker).

    A request's matrix products are small (the latent sources: one customer vector against
    the 20,000 pooled customers); OpenBLAS's worker threads made them up to 10x slower on a
    busy machine (``latent.top_by_vector`` was the largest item of a profiled request) and
    fight the other workers for the cores. One thread gives the same values (each output is
    the same dot product, whichever thread computes it). ``threadpoolctl`` comes with
    scikit-learn.
    """
    threadpool_limits(limits=1, user_api="blas")


def freeze_loaded_objects() -> None:
    """Move everything loaded so far (the models, the libraries) out of the garbage collector's
    sight (``gc.freeze``): a full collection walked those ~290,000 objects in about 200 ms, a
    pause that every request in flight waited for; requests' own objects are still collected."""
    gc.collect()
    gc.freeze()


def load_variants() -> Variants:
    """The variants this worker serves: ``$XSELL_VARIANTS`` (written by :func:`serve`), else
    one variant of :func:`default_model_uri`."""
    resolved = os.environ.get(VARIANTS_ENV)
    if resolved:
        spec = json.loads(Path(resolved).read_text())
        split = Experiment.model_validate(spec["experiment"])
        sources = {name: (m["folder"], m["version"]) for name, m in spec["models"].items()}
    else:
        split = single_variant()
        sources = {split.control: (default_model_uri(), "")}
    loaded: dict[str, tuple[XsellModel, str, Path | None]] = {}
    models = {}
    for name, (uri, version) in sources.items():
        if uri not in loaded:
            model, label = load_worker_model(uri)
            loaded[uri] = (model, version or label, Path(uri) if Path(uri).is_dir() else None)
        models[name] = loaded[uri]
    return Variants(split, models)


def model_card(model: XsellModel, version: str, variants: Variants | None = None) -> dict[str, Any]:
    """What ``GET /model`` answers: version, run, data range, headline metrics, the split."""
    meta = model.meta
    metrics = {k: v for k, v in meta.get("metrics", {}).items() if ".baseline_" not in k}
    return {
        "model_version": version,
        "run_id": meta.get("run_id"),
        "train_until": meta.get("train_until"),
        "data_range": meta.get("data_range"),
        "snapshot_as_of": str(model.snapshot.as_of_timestamp),
        "metrics": metrics,
        "policies": {t.name: model.policy(t.name) for t in model.tasks},
        "served_metrics": meta.get("served_metrics", {}),
        "customers": model.snapshot.n_customers,
        "products": model.snapshot.n_products,
        "experiment": None
        if variants is None
        else {
            "name": variants.experiment.name,
            "control": variants.experiment.control,
            "variants": [
                {
                    "name": v.name,
                    "weight": variants.variant(v.name).weight,
                    "model_version": v.version,
                    "policies": {t.name: v.model.policy(t.name) for t in v.model.tasks},
                    "snapshot_as_of": str(v.model.snapshot.as_of_timestamp),
                }
                for v in variants.served.values()
            ],
        },
    }


# --------------------------------------------------------------------------- HTTP plumbing


def _items(result: QueryResult | None) -> list[Item]:
    if result is None:
        return []
    return [Item(**vars(r), position=i) for i, r in enumerate(result.items, start=1)]


def _warnings(*results: QueryResult | None) -> list[str]:
    return list(dict.fromkeys(w for r in results if r is not None for w in r.warnings))


class RequestGuard:
    """ASGI middleware: a POST body must be JSON and at most ``MAX_BODY_BYTES`` long.

    BentoML would also parse form and pickle bodies; refusing them here keeps every
    malformed request a 4xx.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        media = headers.get(b"content-type", b"application/json").split(b";")[0].strip()
        length = headers.get(b"content-length", b"0")
        limit = MAX_BATCH_BYTES if scope["path"] in BATCH_ROUTES else MAX_BODY_BYTES
        if media not in (b"application/json", b""):
            status, error = 415, "the body must be JSON (application/json)"
        elif not length.isdigit() or int(length) > limit:
            status, error = 413, f"the body must be at most {limit} bytes"
        else:
            return await self.app(scope, receive, send)
        log_rejected(status, "POST", scope["path"], error)
        await JSONResponse({"error": error}, status)(scope, receive, send)


async def _model_info(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    control = service.variants.default
    return JSONResponse(model_card(control.model, control.version, service.variants))


class ReadyProbe:
    """ASGI middleware answering ``GET /readyz`` (BentoML's own probe answers an empty body):
    200 with the model version and what is degraded (the event store), 503 before the model is
    loaded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/readyz" or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        try:
            service = bentoml.get_current_service()
            variants = service.variants
        except (AttributeError, LookupError, RuntimeError):
            await JSONResponse({"ready": False, "degraded": ["model not loaded"]}, 503)(
                scope, receive, send
            )
            return
        problem = await to_thread.run_sync(service.store.status)
        degraded = [] if problem is None else [f"event store: {problem}"]
        body = {"ready": True, "model_version": variants.default.version, "degraded": degraded}
        await JSONResponse(body)(scope, receive, send)


async def _openapi(request: Request) -> JSONResponse:
    """``GET /docs.json``: BentoML's document corrected (:mod:`serving.openapi`); this route
    of the mounted app is matched before BentoML's own ``/docs.json``."""
    return JSONResponse(openapi_document(XsellService))


def _logging_config() -> dict[str, Any]:
    """BentoML's ``logging`` service config: access log only when ``$XSELL_ACCESS_LOG`` is 1."""
    return {"access": {"enabled": os.environ.get(ACCESS_LOG_ENV) == "1"}}


def _tracing_config() -> dict[str, Any]:
    """BentoML's ``tracing`` service config: every route excluded unless ``$XSELL_TRACING``
    is 1."""
    return {} if os.environ.get(TRACING_ENV) == "1" else {"excluded_urls": ["."]}


# -- preview page (serving/preview.py): GET /preview mounted next to /model
info_app = Starlette(
    routes=[
        Route("/docs.json", _openapi, methods=["GET"]),
        Route("/model", _model_info, methods=["GET"]),
        Route("/preview", preview_page, methods=["GET"]),
    ]
)
# -- end preview page


@bentoml.service(
    name="xsell",
    workers=int(os.environ.get(WORKERS_ENV, "1")),
    traffic={"timeout": 10},
    logging=_logging_config(),
    tracing=_tracing_config(),
)
@bentoml.asgi_app(info_app, path="/")
class XsellService:
    """Loads one model version at start; each API method is one call into the model."""

    def __init__(self) -> None:
        self.variants = load_variants()
        self.store = StoreHandle(os.environ.get(STORE_ENV) or DEFAULT_STORE)
        self.recommendations = RecommendationLog(self.store)
        self.variants.watch(float(os.environ.get(RELOAD_ENV, "5")))
        freeze_loaded_objects()
        default = self.variants.default
        log.info("serving model %s (%d variant(s))", default.version, len(self.variants.served))

    @property
    def model(self) -> XsellModel:
        """The control variant's model."""
        return self.variants.default.model

    @property
    def version(self) -> str:
        """The control variant's model version."""
        return self.variants.default.version

    def __is_ready__(self) -> bool:
        return bool(self.variants.served)

    def _live(self, served: ServedVariant, customer_id: str) -> tuple[LiveActivity, list[str]]:
        """The customer's events since the variant's snapshot, or why they could not be read."""
        store = self.store.get()
        if store is None:
            return NO_ACTIVITY, [f"event store: {self.store.problem}"]
        try:
            events = store.customer_events(customer_id, served.cutoff)
        except StoreError as exc:
            return NO_ACTIVITY, [f"event store: {self.store.failed(exc)}"]
        return live_activity(served.model.snapshot, events), []

    def _record(
        self, served: ServedVariant, req: Any, lists: dict[str, list[Item]]
    ) -> tuple[str, list[str]]:
        """Store what was served; its id (and what went wrong, when it could not be stored)."""
        rec_id = uuid.uuid4().hex
        record = RecommendationRecord(
            recommendation_id=rec_id,
            customer_id=req.customer_id,
            placement=req.placement,
            variant=served.name,
            model_version=served.version,
            ts=shop_time(None),
            items=tuple(
                RecommendedItem(task, item.position, item.product_id, item.score, item.price)
                for task, items in lists.items()
                for item in items
            ),
        )
        if self.store.get() is None:
            return rec_id, [f"event store: {self.store.problem}; recommendation not recorded"]
        self.recommendations.add(record)  # written by the log's thread, in batches
        return rec_id, []

    def _open_store(self) -> EventStore:
        store = self.store.get()
        if store is None:
            raise StoreError(self.store.problem or "not open")
        return store

    def _unavailable(self, ctx: bentoml.Context, exc: StoreError) -> StoredResponse:
        """503 naming the store's problem (BentoML would hide a 5xx exception's message)."""
        message = f"event store unavailable: {self.store.failed(exc)}"
        log.error("%s", message)
        ctx.response.status_code = 503
        return StoredResponse(stored=0, duplicates=0, error=message)

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, **fields: Any) -> RecommendResponse:
        """Cross-sells, upsells and replenishments for one customer at one placement."""
        req = RecommendRequest.model_construct(**fields)
        served = self.variants.for_customer(req.customer_id)
        live, degraded = self._live(served, req.customer_id)
        out = served.model.recommend_one(
            customer_id=req.customer_id,
            placement=req.placement,
            product_id=req.product_id,
            cart=list(req.cart),
            k=req.wanted(),
            live=live,
        )
        lists = {task: _items(result) for task, result in out.items()}
        rec_id, not_recorded = self._record(served, req, lists)
        degraded = list(dict.fromkeys(degraded + not_recorded))
        return RecommendResponse(
            **lists,
            recommendation_id=rec_id,
            variant=served.name,
            model_version=served.version,
            policies={task: result.policy for task, result in out.items()},
            fallback=any(r.fallback for r in out.values()),
            degraded=degraded,
            warnings=req.notes() + _warnings(*out.values()),
        )

    @bentoml.api(route="/events", input_spec=EventsRequest)
    async def events(self, ctx: bentoml.Context, **fields: Any) -> StoredResponse:
        """Store live events (idempotent by ``event_id``); durable before the answer."""
        req = EventsRequest.model_construct(**fields)
        records = [e.record() for e in req.events]
        try:
            store = self._open_store()
            refs = [(e.recommendation_id, e.product_id) for e in req.events]
            await self._check_references("events", refs)
            stored, dupes = await to_thread.run_sync(store.add_events, records)
        except StoreError as exc:
            return self._unavailable(ctx, exc)
        index = self.model.snapshot.product_index
        unknown = list(dict.fromkeys(e.product_id for e in records if e.product_id not in index))
        warnings = [f"product ids unknown to the model (stored, not used): {unknown[:5]}"]
        return StoredResponse(stored=stored, duplicates=dupes, warnings=warnings if unknown else [])

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    async def feedback(self, ctx: bentoml.Context, **fields: Any) -> StoredResponse:
        """Store impressions, clicks, adds and purchases against served recommendations."""
        req = FeedbackRequest.model_construct(**fields)
        try:
            store = self._open_store()
            refs = [(f.recommendation_id, f.product_id) for f in req.feedback]
            await self._check_references("feedback", refs)
            rows = [f.record() for f in req.feedback]
            stored, dupes = await to_thread.run_sync(store.add_feedback, rows)
        except StoreError as exc:
            return self._unavailable(ctx, exc)
        return StoredResponse(stored=stored, duplicates=dupes)

    async def _check_references(
        self, field: str, refs: Sequence[tuple[str | None, str | None]]
    ) -> None:
        """Every referenced recommendation (and item) exists (400 naming the row otherwise)."""
        ids = {r for r, _ in refs if r is not None}
        if not ids:
            return

        def lookup() -> dict[str, RecommendationRecord | None]:
            return {i: self.recommendations.get(i) for i in ids}

        check_references(field, refs, await to_thread.run_sync(lookup))

    @bentoml.api(route="/rank", input_spec=RankRequest)
    async def rank(self, **fields: Any) -> RankResponse:
        """Score a caller-supplied product list for one customer and context."""
        req = RankRequest.model_construct(**fields)
        served = self.variants.for_customer(req.customer_id)
        live, _ = self._live(served, req.customer_id)
        result = served.model.score_products(
            task=req.task,
            customer_id=req.customer_id,
            placement=req.placement,
            product_id=req.product_id,
            cart=list(req.cart),
            products=list(req.products),
            live=live,
        )
        return RankResponse(
            task=req.task,
            policy=result.policy,
            items=_items(result),
            model_version=served.version,
            fallback=result.fallback,
            warnings=_warnings(result),
        )


XsellService.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]  # a Service
XsellService.add_asgi_middleware(ReadyProbe)  # type: ignore[attr-defined]
quiet_client_errors()  # a 4xx logs one line, not BentoML's traceback

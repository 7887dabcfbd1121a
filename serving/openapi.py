"""``GET /docs.json``: BentoML's generated OpenAPI document, corrected to say what the service answers.

BentoML 1.4 (``_bentoml_sdk.service.openapi.generate_spec``) declares, for every ``@bentoml.api``
route, 400/404/500 bodies ``{"error": str, "detail": str}``, but a validation error answers
``{"error": str, "detail": [{"type", "loc", "msg", "url"}, ...]}`` (pydantic's error list); it
knows nothing of the 413/415 answers of :class:`serving.service.RequestGuard` nor of the routes
of the mounted Starlette app (``/model``, ``/preview``), and declares no body for the text probes.
:func:`openapi_document` takes the generated document (``Service.openapi_spec``) and rewrites
those parts; the service serves it at ``/docs.json`` from its mounted app, whose routes BentoML
matches before its own ``/docs.json`` (so the Swagger UI at ``/`` shows this document too).

``tests/serving/test_openapi.py`` runs schemathesis against a live server's ``/docs.json``: any
answer the document does not declare, or a body that does not match its schema, fails it.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, Field

from features.data import schema as s

REF = "#/components/schemas/{model}"
OPENAPI_VERSION = "3.1.0"
# BentoML's generic error bodies, replaced by the ones below.
BENTOML_ERRORS = ("InvalidArgument", "NotFound", "InternalServerError")
STORE_ROUTES = ("/events", "/feedback")  # answer 503 when the event store is down


class ValidationErrorItem(BaseModel):
    """One pydantic error: where (``loc``, empty for the body as a whole), what and why."""

    type: str = Field(description="pydantic error type, e.g. 'missing', 'json_invalid'.")
    loc: list[str | int] = Field(description="Path to the field; empty for the whole body.")
    msg: str
    url: str | None = Field(None, description="pydantic's documentation of the error type.")


class ValidationErrorBody(BaseModel):
    """A 400: the request body is not valid JSON or does not match the request schema."""

    error: str = Field(description="Summary, e.g. '2 validation error for RecommendRequest'.")
    detail: list[ValidationErrorItem]


class ErrorBody(BaseModel):
    """A 413, 415 or 500: one message."""

    error: str


class ReadyBody(BaseModel):
    """``GET /readyz``: ready once a model is loaded; what is degraded (answers still served)."""

    ready: bool
    model_version: str | None = None
    degraded: list[str] = Field(
        description="e.g. the event store down: answers are the snapshot's."
    )


class ModelCard(BaseModel):
    """``GET /model``: the served version, its run, data range and headline metrics."""

    model_version: str
    run_id: str | None
    train_until: str | None
    data_range: str | None
    snapshot_as_of: str
    metrics: dict[str, float]
    policies: dict[str, str] = Field(description="Task -> served policy.")
    served_metrics: dict[str, float]
    customers: int
    products: int


def _json(name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=name)}}},
    }


def _text(description: str, media: str = "text/plain") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


API_ERRORS: dict[str, dict[str, Any]] = {
    "400": _json("ValidationErrorBody", "Invalid JSON or a request that fails validation."),
    "413": _json("ErrorBody", "Body longer than the limit (or without a Content-Length)."),
    "415": _json("ErrorBody", "Body that is not application/json."),
    "500": _json("ErrorBody", "Unexpected server error (see the server log)."),
}

PROBE_RESPONSES = {
    "200": _text("OK: a one-line text body."),
    "503": _text("Not alive / not ready (the reason as text)."),
}
READY_RESPONSES = {
    "200": _json("ReadyBody", "Ready; `degraded` lists what cannot be used."),
    "503": _json("ReadyBody", "Not ready: no model loaded yet."),
}
STORE_DOWN = _json("StoredResponse", "The event store is unavailable: nothing stored (`error`).")

MODEL_PATH = {
    "get": {
        "tags": ["Service APIs"],
        "description": "The served model version, its training run, data range and metrics.",
        "operationId": "xsell__model",
        "responses": {"200": _json("ModelCard", "The model card.")},
    }
}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


PREVIEW_PATH = {
    "get": {
        "tags": ["Service APIs"],
        "description": "An HTML page: a customer's recent purchases and views and the lists "
        "the service returns for them at a placement.",
        "operationId": "xsell__preview",
        "parameters": [
            _query("customer_id", "Customer id (default: a customer with orders)."),
            _query("seed", "Without a customer id: pick a random customer with this seed."),
            _query(
                "placement",
                "Where the lists are shown (default product_page).",
                enum=["", *s.PLACEMENTS],
            ),
            _query("product_id", "The viewed product (product page)."),
            _query("cart", "Comma-separated product ids."),
        ],
        "responses": {
            "200": _text("The page.", "text/html"),
            "400": _text("A page naming the query parameter that cannot be used.", "text/html"),
        },
    }
}


def _schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in (ValidationErrorBody, ErrorBody, ModelCard, ReadyBody):
        schema = model.model_json_schema(ref_template=REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _use_component(body: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Point an API's inline JSON schema at its component (the same pydantic model, by title).

    BentoML inlines request and response schemas flattened one level, taking the first branch
    of every ``anyOf``: ``product_id: str | None`` reads as a string that may not be null.
    The components keep pydantic's schema whole.
    """
    media = body["content"]["application/json"]
    if (title := media["schema"].get("title")) in schemas:
        media["schema"] = {"$ref": REF.format(model=title)}


def correct(
    spec: dict[str, Any],
    *,
    api_routes: set[str],
    mounted: set[str],
    store_routes: tuple[str, ...] = STORE_ROUTES,
) -> dict[str, Any]:
    """A copy of BentoML's document (``spec``) declaring what the service really answers.

    ``api_routes``: the ``@bentoml.api`` routes; ``mounted``: the GET routes of the mounted app;
    ``store_routes``: the routes that answer 503 when the event store is down.
    """
    spec = copy.deepcopy(spec)
    # The schemas are pydantic's JSON Schema (2020-12: `anyOf [..., {"type": "null"}]`, not
    # 3.0's `nullable`), which is what OpenAPI 3.1 uses; read as 3.0, a null looks invalid.
    spec["openapi"] = OPENAPI_VERSION
    paths = spec["paths"]
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for route in api_routes:
        post = paths[route]["post"]
        ok = {str(code): r for code, r in post["responses"].items()}["200"]  # int keys
        post["responses"] = {"200": ok, **copy.deepcopy(API_ERRORS)}
        if route in store_routes:
            post["responses"]["503"] = copy.deepcopy(STORE_DOWN)
        for body in (post["requestBody"], ok):
            _use_component(body, schemas)
    for probe in ("/healthz", "/livez"):
        if probe in paths:
            paths[probe]["get"]["responses"] = copy.deepcopy(PROBE_RESPONSES)
    if "/readyz" in paths:  # serving.service.ReadyProbe answers it
        paths["/readyz"]["get"]["responses"] = copy.deepcopy(READY_RESPONSES)
    if "/metrics" in paths:
        paths["/metrics"]["get"]["responses"] = {"200": _text("Prometheus metrics.")}
    if "/model" in mounted:
        paths["/model"] = copy.deepcopy(MODEL_PATH)
    if "/preview" in mounted:
        paths["/preview"] = copy.deepcopy(PREVIEW_PATH)
    for name in BENTOML_ERRORS:
        schemas.pop(name, None)
    schemas.update(_schemas())
    return spec


def openapi_document(service: Any) -> dict[str, Any]:
    """The corrected OpenAPI document of a BentoML service (``@bentoml.service`` object)."""
    mounted = {
        getattr(route, "path", "")
        for app, _, _ in service.mount_apps
        for route in getattr(app, "routes", [])
    }
    return correct(
        service.openapi_spec.asdict(),
        api_routes={api.route for api in service.apis.values()},
        mounted=mounted,
    )

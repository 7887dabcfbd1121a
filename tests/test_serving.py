"""The prediction API: request validation, the same scores as batch scoring, fuzzing, a real server.

One small model is trained per session (a 1,200-customer synthetic shop, a fast config),
registered in a temporary MLflow store and exported to a folder; the in-process tests drive the
service's ASGI app through ``httpx.ASGITransport``, the ``server`` test starts ``xsell serve``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.data import schema as s
from serving.service import (
    DEFAULT_K,
    EXAMPLE_REQUEST,
    MAX_BODY_BYTES,
    MAX_CART,
    MODEL_URI_ENV,
    Placement,
    XsellService,
    export_model,
    load_serving_model,
)
from training.config import RankerConfig, SplitConfig, TrainConfig
from training.model import XsellModel

FAST = TrainConfig(
    split=SplitConfig(train_days=42, max_queries_per_cutoff=800),
    ranker=RankerConfig(max_rounds=60),
)
UNKNOWN_CUSTOMER = "NEVER-SEEN"


class AsgiClient:
    """A synchronous client for an ASGI app, with its lifespan run on a private event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._call(self._open())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def _open(self) -> None:
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()
        transport = httpx.ASGITransport(app=self.app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://xsell")

    async def _close(self) -> None:
        await self.client.aclose()
        await self.lifespan.__aexit__(None, None, None)

    def get(self, url: str) -> httpx.Response:
        return self._call(self.client.get(url))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._call(self.client.post(url, **kwargs))

    def close(self) -> None:
        self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained model, registered in a temporary store and exported as a folder."""
    from features.data.synthetic import generate_shop
    from training.tracking import tracking_uri
    from training.train import train

    root = tmp_path_factory.mktemp("serving")
    generate_shop(root / "shop", n_customers=1200, seed=3)
    result = train(root / "shop", config=FAST, root=root / "mlruns", experiment="serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri(root / "mlruns"))
        folder, version = export_model(f"models:/xsell-ranker/{result.version}", root / "model")
    assert version == f"xsell-ranker/{result.version}"
    return folder


@pytest.fixture(scope="module")
def model(model_dir: Path) -> XsellModel:
    return load_serving_model(str(model_dir))[0]


@pytest.fixture(scope="module")
def api(model_dir: Path) -> Iterator[AsgiClient]:
    """The service's ASGI app serving ``model_dir``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODEL_URI_ENV, str(model_dir))
        mp.setenv("BENTOML_DO_NOT_TRACK", "True")
        client = AsgiClient(XsellService.to_asgi())
    yield client
    client.close()


def _recommend(api: AsgiClient, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _cart_of(model: XsellModel, customer: str) -> list[str]:
    """A plausible cart: the customer's most recent order (non-empty for a buyer)."""
    return model.default_context(customer, "post_purchase", None, [])


def _buyers(model: XsellModel, n: int) -> list[str]:
    """Customers with at least one order before the cut-off."""
    ids = [c for c in model.snapshot.customer_ids[:400].tolist() if _cart_of(model, c)]
    assert len(ids) >= n
    return ids[:n]


# --------------------------------------------------------------------------- happy paths


def test_example_request(api: AsgiClient, model: XsellModel) -> None:
    out = _recommend(api, EXAMPLE_REQUEST)
    assert set(out) == {"cross_sell", "upsell", "model_version", "fallback", "warnings"}
    assert out["model_version"] == "xsell-ranker/1"
    assert 0 < len(out["cross_sell"]) <= EXAMPLE_REQUEST["k_cross_sell"]
    assert len(out["upsell"]) <= EXAMPLE_REQUEST["k_upsell"]
    for item in out["cross_sell"] + out["upsell"]:
        assert set(item) == {"product_id", "score", "price", "reason"}
        assert item["product_id"] in model.snapshot.product_index
        assert item["price"] > 0 and item["reason"]
    scores = [i["score"] for i in out["cross_sell"]]
    assert scores == sorted(scores, reverse=True)


def test_placement_defaults(api: AsgiClient, model: XsellModel) -> None:
    customer = _buyers(model, 1)[0]
    cart = _cart_of(model, customer)
    page = _recommend(
        api, {"customer_id": customer, "placement": "product_page", "product_id": cart[0]}
    )
    assert len(page["cross_sell"]) <= DEFAULT_K["product_page"][s.CROSS_SELL]
    assert len(page["upsell"]) <= DEFAULT_K["product_page"][s.UPSELL]
    out = _recommend(api, {"customer_id": customer, "placement": "cart", "cart": cart})
    assert 0 < len(out["cross_sell"]) <= DEFAULT_K["cart"][s.CROSS_SELL]
    assert out["upsell"] == [] and out["warnings"] == []
    out = _recommend(
        api, {"customer_id": customer, "placement": "cart", "cart": cart, "k_upsell": 2}
    )
    assert out["upsell"] == [] and "k_upsell ignored" in out["warnings"][0]
    assert _recommend(api, {**EXAMPLE_REQUEST, "k_upsell": 0})["upsell"] == []


@pytest.mark.parametrize("placement", ["product_page", "cart", "post_purchase"])
def test_api_scores_equal_batch_scores(api: AsgiClient, model: XsellModel, placement: str) -> None:
    """``POST /recommend`` and ``xsell recommend`` (batch, as_of = cut-off) agree exactly."""
    for customer in _buyers(model, 3):
        cart = _cart_of(model, customer)
        anchor = cart[0] if placement == "product_page" else None
        body: dict[str, Any] = {"customer_id": customer, "placement": placement, "cart": cart}
        if anchor:
            body.update(product_id=anchor, cart=[])
        out = _recommend(api, {**body, "k_cross_sell": 5, "k_upsell": 5})
        frame = pd.DataFrame(
            {
                "query_id": ["q"],
                "customer_id": [customer],
                "placement": [placement],
                "anchor_product_id": [anchor],
                "cart_product_ids": [body["cart"]],
                "as_of": [model.snapshot.as_of_timestamp],
                "k": [5],
            }
        )
        batch = model.recommend(frame)
        for task in s.TASKS:
            rows = batch.loc[batch["task"] == task]
            api_items = [(i["product_id"], i["score"]) for i in out[task]]
            assert api_items == list(zip(rows["product_id"], rows["score"], strict=True))


def test_guardrails_hold(api: AsgiClient, model: XsellModel) -> None:
    price = model.snapshot.arrays["price"]
    family = model.snapshot.arrays["family"]
    index = model.snapshot.product_index
    cap = model.snapshot.config.upsell_max_uplift
    for customer in _buyers(model, 5):
        cart = _cart_of(model, customer)
        out = _recommend(api, {"customer_id": customer, "placement": "checkout", "cart": cart})
        assert not {i["product_id"] for i in out["cross_sell"]} & set(cart)
        anchor = cart[0]
        page = _recommend(
            api, {"customer_id": customer, "placement": "product_page", "product_id": anchor}
        )
        for item in page["upsell"]:
            j, a = index[item["product_id"]], index[anchor]
            assert family[j] == family[a]
            assert price[a] < price[j] <= price[a] * (1 + cap) + 1e-9


def test_post_purchase_defaults_to_the_last_order(api: AsgiClient, model: XsellModel) -> None:
    customer = _buyers(model, 1)[0]
    implicit = _recommend(api, {"customer_id": customer, "placement": "post_purchase"})
    explicit = _recommend(
        api,
        {"customer_id": customer, "placement": "post_purchase", "cart": _cart_of(model, customer)},
    )
    assert implicit == explicit
    assert implicit["cross_sell"]


# --------------------------------------------------------------------------- cold start


def test_unknown_customer_gets_popular_products(api: AsgiClient) -> None:
    for placement in ("cart", "post_purchase"):
        out = _recommend(api, {"customer_id": UNKNOWN_CUSTOMER, "placement": placement})
        assert out["fallback"] is True
        assert out["cross_sell"]
    out = _recommend(api, {**EXAMPLE_REQUEST, "customer_id": UNKNOWN_CUSTOMER})
    assert out["fallback"] is True


def test_unknown_products_are_warnings(api: AsgiClient) -> None:
    body = {
        "customer_id": "C0000001",
        "placement": "product_page",
        "product_id": "NO-SUCH-1",
        "cart": ["NO-SUCH-2", "P00011"],
    }
    out = _recommend(api, body)
    assert out["warnings"] == ["unknown product id 'NO-SUCH-1'", "unknown product id 'NO-SUCH-2'"]
    assert out["upsell"] == []


# --------------------------------------------------------------------------- /rank


def test_rank_scores_the_given_list(api: AsgiClient, model: XsellModel) -> None:
    customer = _buyers(model, 1)[0]
    given = model.snapshot.product_ids[:30].tolist()
    r = api.post(
        "/rank",
        json={
            "customer_id": customer,
            "placement": "cart",
            "cart": _cart_of(model, customer),
            "products": [*given, "NO-SUCH", given[0]],
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["task"] == s.CROSS_SELL and out["warnings"] == ["unknown product id 'NO-SUCH'"]
    assert sorted(i["product_id"] for i in out["items"]) == sorted(given)
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()
    r = api.post(
        "/rank",
        json={"customer_id": customer, "placement": "cart", "task": "upsell", "products": given},
    )
    assert r.status_code == 400 and "product_id" in r.text


# --------------------------------------------------------------------------- probes


def test_probes_and_model_card(api: AsgiClient) -> None:
    assert api.get("/healthz").status_code == 200
    assert api.get("/readyz").status_code == 200
    card = api.get("/model").json()
    assert card["model_version"] == "xsell-ranker/1"
    assert card["run_id"] and card["train_until"] and card["data_range"]
    assert set(card["metrics"]) == {f"{t}.ndcg_at_10" for t in s.TASKS}


def test_placements_are_the_schema_placements() -> None:
    assert get_args(Placement) == s.PLACEMENTS


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"placement": "homepage"}, "placement"),
        ({"customer_id": 42}, "customer_id"),
        ({"customer_id": ""}, "customer_id"),
        ({"k_cross_sell": 51}, "k_cross_sell"),
        ({"k_upsell": -1}, "k_upsell"),
        ({"k_upsell": "3"}, "k_upsell"),
        ({"k_cross_sell": 0, "k_upsell": 0}, "k_cross_sell"),
        ({"cart": ["P00001"] * (MAX_CART + 1)}, "cart"),
        ({"cart": "P00001"}, "cart"),
        ({"product_id": None}, "product_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    api: AsgiClient, change: dict[str, Any], field: str
) -> None:
    r = api.post("/recommend", json={**EXAMPLE_REQUEST, **change})
    assert r.status_code == 400
    assert field in r.text


def test_missing_field_is_400(api: AsgiClient) -> None:
    r = api.post("/recommend", json={"placement": "cart"})
    assert r.status_code == 400 and "customer_id" in r.text


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"", "application/json", 400),
        (b"customer_id=C1", "application/x-www-form-urlencoded", 415),
        (b"--x\r\n\r\n", "multipart/form-data; boundary=x", 415),
        (b"\x80\x81", "application/vnd.bentoml+pickle", 415),
        (b" " * (MAX_BODY_BYTES + 1), "application/json", 413),
    ],
)
def test_malformed_bodies_are_4xx(
    api: AsgiClient, content: bytes, content_type: str, status: int
) -> None:
    for path in ("/recommend", "/rank"):
        r = api.post(path, content=content, headers={"content-type": content_type})
        assert r.status_code == status, r.text


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    ["customer_id", "placement", "product_id", "cart", "k_cross_sell", "k_upsell", "task"]
)
PLAUSIBLE = st.fixed_dictionaries(
    {"customer_id": st.sampled_from(["C0000001", "C0000002", UNKNOWN_CUSTOMER, ""])},
    optional={
        "placement": st.sampled_from([*s.PLACEMENTS, "nowhere"]),
        "product_id": st.sampled_from(["P00011", "P00500", "NO-SUCH", ""]) | st.none(),
        "cart": st.lists(st.sampled_from(["P00001", "P00011", "P01176", "NO-SUCH"]), max_size=5),
        "k_cross_sell": st.integers(-2, 60),
        "k_upsell": st.integers(-2, 60),
        "products": st.lists(st.sampled_from(["P00002", "P00700", "NO-SUCH"]), max_size=4),
        "task": st.sampled_from([*s.TASKS, "both"]),
    },
)
BODIES = (
    PLAUSIBLE.map(json.dumps)
    | st.dictionaries(FIELDS | st.text(max_size=10), JSON_VALUES, max_size=7).map(json.dumps)
    | JSON_VALUES.map(json.dumps)
    | st.text(max_size=50)
).map(str.encode) | st.binary(max_size=64)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES, path=st.sampled_from(["/recommend", "/rank"]))
def test_fuzzed_bodies_never_5xx(api: AsgiClient, body: bytes, path: str) -> None:
    r = api.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, (body, r.text)
    if r.status_code == 200:
        assert r.json()["model_version"] == "xsell-ranker/1"


# --------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.server
def test_xsell_serve_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True"}
    log = (tmp_path / "server.log").open("w")
    cli = [sys.executable, "-c", "from training.cli import main; main()"]
    proc = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--model", str(model_dir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not get ready"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/model").json()["model_version"] == "xsell-ranker/1"
            out = client.post("/recommend", json=EXAMPLE_REQUEST)
            assert out.status_code == 200 and out.json()["cross_sell"]
            ranked = client.post(
                "/rank",
                json={"customer_id": "C0000001", "placement": "cart", "products": ["P00002"]},
            )
            assert ranked.status_code == 200 and len(ranked.json()["items"]) == 1
            bad = client.post("/recommend", json={**EXAMPLE_REQUEST, "placement": "x"})
            assert bad.status_code == 400 and "placement" in bad.text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()

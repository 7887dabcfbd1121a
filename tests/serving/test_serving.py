"""The prediction API: request validation, the same scores as batch scoring, fuzzing, a real server.

The suite's shared trained model (``trained_model.trained``: a 1,200-customer synthetic shop,
a fast config, a temporary MLflow store) is exported from the registry to a folder; the in-process tests drive the
service's ASGI app through ``httpx.ASGITransport``, the ``server`` test starts ``xsell serve``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import numpy as np
import pandas as pd
import pytest
from asgi_client import AsgiClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import export_shared_model, xsell_serve
from trained_model import MODEL_NAME, Trained

from features.compiled import probe_matrix
from features.data import schema as s
from features.recommend import BASELINE_PREFIX, RANKER, default_context, placement_defaults
from features.tasks import get_task, task_names, tasks_at
from serving.service import (
    COMPILED_ENV,
    EXAMPLE_REQUEST,
    FOREST_CACHE_ENV,
    MAX_BODY_BYTES,
    MAX_CART,
    MODEL_URI_ENV,
    STORE_ENV,
    Placement,
    RecommendRequest,
    RecommendResponse,
    XsellService,
    load_worker_model,
)
from training.model import XsellModel, load_serving_model

UNKNOWN_CUSTOMER = "NEVER-SEEN"


@pytest.fixture(scope="session")
def model_dir(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared trained model's version 1, exported from its registry as a folder."""
    folder, version = export_shared_model(trained, tmp_path_factory.mktemp("serving") / "model")
    assert version == f"{MODEL_NAME}/1"
    return folder


@pytest.fixture(scope="module")
def model(model_dir: Path) -> XsellModel:
    return load_serving_model(str(model_dir))[0]


@pytest.fixture(scope="module")
def api(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsgiClient]:
    """The service's ASGI app serving ``model_dir``, with an event store of its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODEL_URI_ENV, str(model_dir))
        mp.setenv(STORE_ENV, str(tmp_path_factory.mktemp("store")))
        mp.setenv(FOREST_CACHE_ENV, str(tmp_path_factory.mktemp("forests")))
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
    return default_context(model.snapshot, customer, "post_purchase", None, [])


def _buyers(model: XsellModel, n: int) -> list[str]:
    """Customers with at least one order before the cut-off."""
    ids = [c for c in model.snapshot.customer_ids[:400].tolist() if _cart_of(model, c)]
    assert len(ids) >= n
    return ids[:n]


def _bought(model: XsellModel, customer: str, products: list[str]) -> np.ndarray:
    """Whether ``customer`` bought each product before the snapshot's cut-off."""
    snap = model.snapshot
    rows = np.full(len(products), snap.customer_index[customer], dtype=np.int64)
    cols = np.asarray([snap.product_index[p] for p in products], dtype=np.int64)
    return snap.history.bought.get(rows, cols) > 0


def _restockers(model: XsellModel, n: int) -> list[str]:
    """Buyers with an in-stock consumable bought before that is not in their last order."""
    snap = model.snapshot
    out = []
    for customer in snap.customer_ids[:600].tolist():
        cart = {snap.product_index[p] for p in _cart_of(model, customer)}
        cols, _ = snap.history.bought.row(snap.customer_index[customer])
        due = [
            int(p)
            for p in cols
            if snap.products.is_consumable[p] and snap.products.in_stock[p] and p not in cart
        ]
        if cart and due:
            out.append(customer)
    assert len(out) >= n
    return out[:n]


def _all_k(k: int) -> dict[str, int]:
    """``k_<task>: k`` for every registered task."""
    return {f"k_{task}": k for task in task_names()}


# --------------------------------------------------------------------------- happy paths


def test_example_request(api: AsgiClient, model: XsellModel) -> None:
    out = _recommend(api, EXAMPLE_REQUEST)
    assert set(out) == {
        *task_names(),
        "recommendation_id",
        "variant",
        "policies",
        "model_version",
        "fallback",
        "degraded",
        "warnings",
    }
    assert out["variant"] == "champion" and out["degraded"] == []
    assert out["model_version"] == "xsell-ranker/1"
    assert 0 < len(out["cross_sell"]) <= EXAMPLE_REQUEST["k_cross_sell"]
    assert len(out["upsell"]) <= EXAMPLE_REQUEST["k_upsell"]
    assert out["replenish"] == []  # not offered on a product page
    for item in out["cross_sell"] + out["upsell"]:
        assert set(item) == {"product_id", "score", "price", "reason", "position"}
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
    defaults = placement_defaults("product_page")
    assert set(defaults) == {s.CROSS_SELL, s.UPSELL}
    assert 0 < len(page["cross_sell"]) <= defaults[s.CROSS_SELL]
    assert len(page["upsell"]) <= defaults[s.UPSELL]
    assert page["replenish"] == [] and page["warnings"] == []
    defaults = placement_defaults("cart")
    assert set(defaults) == {s.CROSS_SELL, s.REPLENISH}
    out = _recommend(api, {"customer_id": customer, "placement": "cart", "cart": cart})
    assert 0 < len(out["cross_sell"]) <= defaults[s.CROSS_SELL]
    assert len(out["replenish"]) <= defaults[s.REPLENISH]
    assert out["upsell"] == [] and out["warnings"] == []
    out = _recommend(
        api, {"customer_id": customer, "placement": "cart", "cart": cart, "k_upsell": 2}
    )
    assert out["upsell"] == [] and out["warnings"] == [
        "k_upsell ignored: upsell is not offered at cart"
    ]
    page = _recommend(api, {**EXAMPLE_REQUEST, "k_replenish": 2})
    assert page["replenish"] == [] and "k_replenish ignored" in page["warnings"][0]
    assert _recommend(api, {**EXAMPLE_REQUEST, "k_upsell": 0})["upsell"] == []
    out = _recommend(api, {"customer_id": customer, "placement": "cart", "k_cross_sell": 1})
    assert len(out["cross_sell"]) == 1


@pytest.mark.parametrize("placement", ["product_page", "cart", "post_purchase"])
def test_api_scores_equal_batch_scores(api: AsgiClient, model: XsellModel, placement: str) -> None:
    """``POST /recommend`` and ``xsell recommend`` (batch, as_of = cut-off) agree exactly (the
    service scores with compiled forests, the batch with LightGBM's predict)."""
    compared = 0
    for customer in _buyers(model, 3):
        cart = _cart_of(model, customer)
        anchor = cart[0] if placement == "product_page" else None
        body: dict[str, Any] = {"customer_id": customer, "placement": placement, "cart": cart}
        if anchor:
            body.update(product_id=anchor, cart=[])
        out = _recommend(api, {**body, **_all_k(5)})
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
        assert set(batch["task"]) <= {t.name for t in tasks_at(placement)}
        for task in task_names():
            rows = batch.loc[batch["task"] == task]
            api_items = [(i["product_id"], i["score"]) for i in out[task]]
            assert api_items == list(zip(rows["product_id"], rows["score"], strict=True))
            compared += len(api_items)
    assert compared > 0


def test_workers_score_with_compiled_rankers(
    model_dir: Path, model: XsellModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker compiles every served ranker (cached: a second worker loads the machine code);
    ``$XSELL_COMPILED=0`` keeps LightGBM."""
    monkeypatch.setenv(FOREST_CACHE_ENV, str(tmp_path))
    served = sorted(t.name for t in model.tasks if model.policy(t.name) == RANKER)
    first, _ = load_worker_model(str(model_dir))
    assert served and sorted(first.compiled) == served
    cached = sorted(tmp_path.glob("forest-*.o"))
    assert len(cached) == len(served)
    second, _ = load_worker_model(str(model_dir))
    assert sorted(tmp_path.glob("forest-*.o")) == cached
    for task in served:
        X = probe_matrix(model.boosters[task], rows=500, seed=1)  # on and around every split
        assert np.array_equal(second.ranker_score(X, task), model.ranker_score(X, task))
    monkeypatch.setenv(COMPILED_ENV, "0")
    assert load_worker_model(str(model_dir))[0].compiled == {}


def test_guardrails_hold(api: AsgiClient, model: XsellModel) -> None:
    snap = model.snapshot
    price, family, category = snap.products.price, snap.products.family, snap.products.category
    stock, consumable = snap.products.in_stock, snap.products.is_consumable
    index = snap.product_index
    cap = snap.config.upsell_max_uplift
    per_category = snap.config.max_per_category
    n_cross = n_upsell = 0
    for customer in _buyers(model, 8):
        cart = _cart_of(model, customer)
        out = _recommend(
            api, {"customer_id": customer, "placement": "checkout", "cart": cart, **_all_k(10)}
        )
        for task in (s.CROSS_SELL, s.REPLENISH):  # the diverse tasks
            ids = [i["product_id"] for i in out[task]]
            assert not set(ids) & set(cart)
            assert all(stock[index[p]] for p in ids)
            cats = [int(category[index[p]]) for p in ids]
            assert max((cats.count(c) for c in cats), default=0) <= per_category
        cross = [i["product_id"] for i in out["cross_sell"]]
        n_cross += len(cross)
        assert cross and not _bought(model, customer, cross).any()  # new to the customer
        cart_value = sum(price[index[p]] for p in cart)
        assert all(
            price[index[p]] <= snap.config.cross_sell_price_cap * cart_value + 1e-9 for p in cross
        )
        for anchor in cart[:2]:
            page = _recommend(
                api,
                {
                    "customer_id": customer,
                    "placement": "product_page",
                    "product_id": anchor,
                    "k_upsell": 10,
                },
            )
            ups = [i["product_id"] for i in page["upsell"]]
            n_upsell += len(ups)
            cols = np.asarray([index[p] for p in ups], dtype=np.int64)
            owned = snap.history.owned.get(np.full(len(ups), snap.customer_index[customer]), cols)
            assert not ((owned > 0) & ~consumable[cols]).any()  # no owned durable is upsold
            for p in ups:
                j, a = index[p], index[anchor]
                assert j != a and stock[j]
                assert family[j] == family[a]
                assert price[a] < price[j] <= price[a] * (1 + cap) + 1e-9
    assert n_cross > 0 and n_upsell > 0


def test_upsell_lists_are_not_capped_per_category(api: AsgiClient, model: XsellModel) -> None:
    """Upsells are versions of one family: the category diversity cap does not cut them."""
    snap = model.snapshot
    cap = snap.config.max_per_category
    longest = 0
    for customer in _buyers(model, 40):
        for anchor in _cart_of(model, customer):
            page = _recommend(
                api,
                {
                    "customer_id": customer,
                    "placement": "product_page",
                    "product_id": anchor,
                    "k_upsell": 10,
                },
            )
            cats = {
                int(snap.products.category[snap.product_index[i["product_id"]]])
                for i in page["upsell"]
            }
            assert len(cats) <= 1  # one family, so one category
            longest = max(longest, len(page["upsell"]))
        if longest > cap:
            break
    assert longest > cap


def test_replenish_recommends_consumables_bought_before(api: AsgiClient, model: XsellModel) -> None:
    snap = model.snapshot
    for customer in _restockers(model, 5):
        cart = _cart_of(model, customer)
        out = _recommend(api, {"customer_id": customer, "placement": "cart", "cart": cart})
        ids = [i["product_id"] for i in out["replenish"]]
        assert 0 < len(ids) <= placement_defaults("cart")[s.REPLENISH]
        assert _bought(model, customer, ids).all()
        assert all(snap.products.is_consumable[snap.product_index[p]] for p in ids)
        assert not set(ids) & set(cart)
        scores = [i["score"] for i in out["replenish"]]
        assert scores == sorted(scores, reverse=True)
        assert out["policies"][s.REPLENISH] == model.policy(s.REPLENISH)


def test_post_purchase_defaults_to_the_last_order(api: AsgiClient, model: XsellModel) -> None:
    customer = _buyers(model, 1)[0]
    implicit = _recommend(api, {"customer_id": customer, "placement": "post_purchase"})
    explicit = _recommend(
        api,
        {"customer_id": customer, "placement": "post_purchase", "cart": _cart_of(model, customer)},
    )
    assert implicit["recommendation_id"] != explicit["recommendation_id"]  # one per answer
    for answer in (implicit, explicit):
        answer.pop("recommendation_id")
    assert implicit == explicit
    assert implicit["cross_sell"]


# --------------------------------------------------------------------------- cold start


def test_unknown_customer_gets_popular_products(api: AsgiClient) -> None:
    for placement in ("cart", "post_purchase"):
        out = _recommend(api, {"customer_id": UNKNOWN_CUSTOMER, "placement": placement})
        assert out["fallback"] is True
        assert out["cross_sell"]
        assert out["replenish"] == []  # nothing bought, nothing to replenish
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
    assert out["policy"] == model.policy(s.CROSS_SELL)
    assert sorted(i["product_id"] for i in out["items"]) == sorted(given)
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()
    r = api.post(
        "/rank",
        json={"customer_id": customer, "placement": "cart", "task": "upsell", "products": given},
    )
    assert r.status_code == 400 and "product_id" in r.text
    r = api.post(
        "/rank",
        json={"customer_id": customer, "placement": "cart", "task": s.REPLENISH, "products": given},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["task"] == s.REPLENISH and out["policy"] == model.policy(s.REPLENISH)
    assert sorted(i["product_id"] for i in out["items"]) == sorted(given)


# --------------------------------------------------------------------------- policies


def _valid_policy(task: str, policy: str) -> bool:
    if policy == RANKER:
        return True
    return policy.startswith(BASELINE_PREFIX) and bool(
        get_task(task).baseline(policy.removeprefix(BASELINE_PREFIX))
    )


def test_policies_name_every_task(api: AsgiClient, model: XsellModel) -> None:
    assert set(model.policies) == set(task_names())
    card = api.get("/model").json()
    assert card["policies"] == {t: model.policy(t) for t in task_names()}
    assert all(_valid_policy(t, p) for t, p in card["policies"].items())
    customer = _restockers(model, 1)[0]
    cart = _cart_of(model, customer)
    seen: dict[str, str] = {}
    for placement in s.PLACEMENTS:
        body = {"customer_id": customer, "placement": placement, "cart": cart}
        if placement == "product_page":
            body.update(product_id=cart[0], cart=[])
        out = _recommend(api, body)
        # every task the placement asks for is named, with the bundle's served policy
        assert set(out["policies"]) == set(placement_defaults(placement))
        assert out["policies"] == {t: card["policies"][t] for t in out["policies"]}
        seen.update(out["policies"])
    assert set(seen) == set(task_names())
    out = _recommend(api, {**EXAMPLE_REQUEST, "k_upsell": 0})
    assert set(out["policies"]) == {s.CROSS_SELL}  # a skipped task has no list and no policy


# --------------------------------------------------------------------------- the schema


def test_request_and_response_have_a_field_per_task(api: AsgiClient) -> None:
    names = task_names()
    assert set(names) == {s.CROSS_SELL, s.UPSELL, s.REPLENISH}
    assert {f"k_{t}" for t in names} <= set(RecommendRequest.model_fields)
    assert set(names) <= set(RecommendResponse.model_fields)
    spec = api.get("/docs.json").json()
    schemas = spec["components"]["schemas"]
    request = next(v for k, v in schemas.items() if k.startswith("RecommendRequest"))
    assert {f"k_{t}" for t in names} <= set(request["properties"])
    response = next(v for k, v in schemas.items() if k.startswith("RecommendResponse"))
    assert {*names, "policies"} <= set(response["properties"])


# --------------------------------------------------------------------------- probes


def test_probes_and_model_card(api: AsgiClient, model: XsellModel) -> None:
    assert api.get("/healthz").status_code == 200
    assert api.get("/readyz").status_code == 200
    card = api.get("/model").json()
    assert card["model_version"] == "xsell-ranker/1"
    assert card["run_id"] and card["train_until"] and card["data_range"]
    # the ranker's headline metric per task (and per item kind), no baseline's
    assert {f"{t}.ndcg_at_10" for t in task_names()} <= set(card["metrics"])
    assert all(
        k.split(".")[0] in task_names() and k.endswith(".ndcg_at_10") and "baseline_" not in k
        for k in card["metrics"]
    )
    assert card["served_metrics"] == model.meta["served_metrics"] and card["served_metrics"]
    assert card["customers"] == model.snapshot.n_customers
    assert card["products"] == model.snapshot.n_products


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
        ({"k_replenish": 51}, "k_replenish"),
        ({"k_replenish": 1.5}, "k_replenish"),
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
    ["customer_id", "placement", "product_id", "cart", *(f"k_{t}" for t in task_names()), "task"]
)
PLAUSIBLE = st.fixed_dictionaries(
    {"customer_id": st.sampled_from(["C0000001", "C0000002", UNKNOWN_CUSTOMER, ""])},
    optional={
        "placement": st.sampled_from([*s.PLACEMENTS, "nowhere"]),
        "product_id": st.sampled_from(["P00011", "P00500", "NO-SUCH", ""]) | st.none(),
        "cart": st.lists(st.sampled_from(["P00001", "P00011", "P01176", "NO-SUCH"]), max_size=5),
        **{f"k_{t}": st.integers(-2, 60) for t in task_names()},
        "products": st.lists(st.sampled_from(["P00002", "P00700", "NO-SUCH"]), max_size=4),
        "task": st.sampled_from([*task_names(), "both"]),
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


@pytest.mark.server
def test_xsell_serve_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    with (
        xsell_serve(model_dir, tmp_path) as live,
        httpx.Client(base_url=live.base, timeout=10) as client,
    ):
        assert client.get("/healthz").status_code == 200
        assert client.get("/model").json()["model_version"] == "xsell-ranker/1"
        out = client.post("/recommend", json=EXAMPLE_REQUEST)
        assert out.status_code == 200 and out.json()["cross_sell"]
        assert set(out.json()["policies"]) == {s.CROSS_SELL, s.UPSELL}
        ranked = client.post(
            "/rank",
            json={"customer_id": "C0000001", "placement": "cart", "products": ["P00002"]},
        )
        assert ranked.status_code == 200 and len(ranked.json()["items"]) == 1
        bad = client.post("/recommend", json={**EXAMPLE_REQUEST, "placement": "x"})
        assert bad.status_code == 400 and "placement" in bad.text

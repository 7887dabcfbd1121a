"""The online loop in the API: POST /events and /feedback, recommendation ids, the traffic
split, a store that is down, the snapshot hot reload, and (with a real server) restart
durability. In-process tests drive the ASGI app with a real SQLite store in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from asgi_client import AsgiClient
from live_server import export_shared_model, xsell_serve
from trained_model import Trained

from features.data import schema as s
from features.recommend import XsellModel
from online.experiments import Experiment, Variant
from online.store import EventStore
from serving.live import MAX_BATCH
from serving.service import (
    MODEL_URI_ENV,
    RELOAD_ENV,
    STORE_ENV,
    VARIANTS_ENV,
    XsellService,
)
from training.model import refresh_model_snapshot


@pytest.fixture(scope="module")
def model_dir(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder of this module's own (the reload test refreshes it)."""
    folder, _ = export_shared_model(trained, tmp_path_factory.mktemp("live") / "model")
    return folder


@pytest.fixture(scope="module")
def model(model_dir: Path) -> XsellModel:
    return XsellModel.load(model_dir)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


def _client(env: dict[str, str]) -> AsgiClient:
    with pytest.MonkeyPatch.context() as mp:
        for key in (VARIANTS_ENV, RELOAD_ENV):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setenv("BENTOML_DO_NOT_TRACK", "True")
        return AsgiClient(XsellService.to_asgi())


@pytest.fixture(scope="module")
def api(model_dir: Path, store_dir: Path) -> Iterator[AsgiClient]:
    client = _client({MODEL_URI_ENV: str(model_dir), STORE_ENV: str(store_dir)})
    yield client
    client.close()


def _customer_with_cross_sells(api: AsgiClient, model: XsellModel) -> tuple[str, list[str], dict]:
    snap = model.snapshot
    cart = [str(snap.product_ids[int(snap.top.global_top[0])])]
    for c in snap.customer_ids[:50]:
        body = {"customer_id": str(c), "placement": "cart", "cart": cart, "k_cross_sell": 3}
        out = api.post("/recommend", json=body).json()
        if out["cross_sell"]:
            return str(c), cart, out
    raise AssertionError("no customer with cross-sells")


def _purchase(event_id: str, customer: str, product: str, **kw: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "purchase",
        "customer_id": customer,
        "product_id": product,
        "order_id": f"o-{event_id}",
        "unit_price": 9.5,
        **kw,
    }


def test_recommend_carries_an_id_variant_and_positions(
    api: AsgiClient, model: XsellModel, store_dir: Path
) -> None:
    _, _, out = _customer_with_cross_sells(api, model)
    assert out["variant"] == "champion" and out["degraded"] == []
    assert [i["position"] for i in out["cross_sell"]] == list(range(1, len(out["cross_sell"]) + 1))
    store = EventStore.open(store_dir)
    deadline = time.monotonic() + 10  # the service writes its log every 50 ms, in a thread
    while (record := store.recommendation(out["recommendation_id"])) is None:
        assert time.monotonic() < deadline, "the recommendation was never written"
        time.sleep(0.02)
    assert record.variant == "champion"
    assert [(i.task, i.position, i.product_id) for i in record.items] == [
        ("cross_sell", i["position"], i["product_id"]) for i in out["cross_sell"]
    ] + [("replenish", i["position"], i["product_id"]) for i in out["replenish"]]


def test_a_live_purchase_changes_the_next_answer(
    api: AsgiClient, model: XsellModel, store_dir: Path
) -> None:
    customer, cart, out = _customer_with_cross_sells(api, model)
    top = out["cross_sell"][0]["product_id"]
    event = _purchase("live-1", customer, top, recommendation_id=out["recommendation_id"])
    r = api.post("/events", json={"events": [event]})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1 and r.json()["duplicates"] == 0
    again = api.post("/events", json={"events": [event]}).json()
    assert (again["stored"], again["duplicates"]) == (0, 1)  # idempotent by event_id
    body = {"customer_id": customer, "placement": "cart", "cart": cart, "k_cross_sell": 3}
    after = api.post("/recommend", json=body).json()
    assert top not in {i["product_id"] for i in after["cross_sell"]}
    assert EventStore.open(store_dir).counts()["events"] >= 1


def test_the_live_cart_is_the_context_when_the_request_sends_none(
    api: AsgiClient, model: XsellModel
) -> None:
    snap = model.snapshot
    customer = str(snap.customer_ids[7])
    product = str(snap.product_ids[int(snap.top.global_top[1])])
    add = {
        "event_id": "cart-1",
        "event_type": "add_to_cart",
        "customer_id": customer,
        "product_id": product,
    }
    assert api.post("/events", json={"events": [add]}).status_code == 200
    out = api.post(
        "/recommend", json={"customer_id": customer, "placement": "cart", "k_cross_sell": 3}
    ).json()
    assert product not in {i["product_id"] for i in out["cross_sell"]}  # the cart is excluded
    assert out["cross_sell"], "the live cart gives the cross-sell a context"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"event_type": "purchase", "order_id": None}, "order_id"),
        ({"event_type": "purchase", "unit_price": None}, "unit_price"),
        ({"event_type": "bought"}, "event_type"),
        ({"customer_id": ""}, "customer_id"),
        ({"ts": "yesterday"}, "ts"),
        ({"quantity": 0}, "quantity"),
        ({"surprise": 1}, "surprise"),
        ({"recommendation_id": "no-such-id"}, "events.0.recommendation_id"),
    ],
)
def test_bad_events_are_400_naming_the_field(
    api: AsgiClient, event: dict[str, Any], field: str
) -> None:
    body = {"events": [{**_purchase("bad-1", "C1", "P1"), **event}]}
    r = api.post("/events", json=body)
    assert r.status_code == 400, r.text
    assert field in r.text


def test_event_batches_have_a_size_limit(api: AsgiClient) -> None:
    events = [_purchase(f"many-{i}", "C1", "P1") for i in range(MAX_BATCH + 1)]
    r = api.post("/events", json={"events": events})
    assert (r.status_code in (400, 413) and "events" in r.text) or r.status_code == 413
    assert api.post("/events", json={"events": []}).status_code == 400


def test_feedback_against_a_recommendation(
    api: AsgiClient, model: XsellModel, store_dir: Path
) -> None:
    _, _, out = _customer_with_cross_sells(api, model)
    rec, item = out["recommendation_id"], out["cross_sell"][0]["product_id"]
    rows = [
        {"recommendation_id": rec, "event_type": "impression"},
        {"recommendation_id": rec, "event_type": "click", "product_id": item},
        {"recommendation_id": rec, "event_type": "purchase", "product_id": item, "unit_price": 3.0},
    ]
    r = api.post("/feedback", json={"feedback": rows})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 3
    again = api.post("/feedback", json={"feedback": rows[1:2]}).json()
    assert (again["stored"], again["duplicates"]) == (0, 1)  # the same click counts once
    stored = EventStore.open(store_dir).tables()["feedback"]
    assert set(stored.loc[stored.recommendation_id == rec, "event_type"]) == {
        "impression",
        "click",
        "purchase",
    }


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"recommendation_id": "nope"}, "feedback.0.recommendation_id"),
        ({"product_id": "P-not-shown"}, "feedback.0.product_id"),
        ({"event_type": "click", "product_id": None}, "product_id"),
        ({"event_type": "liked"}, "event_type"),
        ({"quantity": -1}, "quantity"),
    ],
)
def test_bad_feedback_is_400_naming_the_field(
    api: AsgiClient, model: XsellModel, row: dict[str, Any], field: str
) -> None:
    _, _, out = _customer_with_cross_sells(api, model)
    base = {
        "recommendation_id": out["recommendation_id"],
        "event_type": "click",
        "product_id": out["cross_sell"][0]["product_id"],
    }
    r = api.post("/feedback", json={"feedback": [{**base, **row}]})
    assert r.status_code == 400, r.text
    assert field in r.text


def test_a_store_that_is_down_degrades_but_serves(model_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    client = _client({MODEL_URI_ENV: str(model_dir), STORE_ENV: str(blocker / "store")})
    try:
        body = {"customer_id": "C0001", "placement": "cart", "cart": [], "k_replenish": 2}
        r = client.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        assert any("event store" in d for d in r.json()["degraded"])
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["degraded"]
        events = client.post("/events", json={"events": [_purchase("x", "C1", "P1")]})
        assert events.status_code == 503 and "event store" in events.text
    finally:
        client.close()


def test_the_split_serves_each_customer_one_variant(
    model_dir: Path, model: XsellModel, tmp_path: Path
) -> None:
    split = Experiment(
        name="ab",
        variants=[
            Variant(name="champion", weight=1),
            Variant(name="weak", weight=1, policies={s.CROSS_SELL: "baseline:popular"}),
        ],
    )
    version = model.meta.get("model_version", "v")
    spec = {
        "experiment": split.model_dump(),
        "models": {v.name: {"folder": str(model_dir), "version": version} for v in split.variants},
    }
    (tmp_path / "variants.json").write_text(json.dumps(spec))
    client = _client(
        {
            MODEL_URI_ENV: str(model_dir),
            STORE_ENV: str(tmp_path / "store"),
            VARIANTS_ENV: str(tmp_path / "variants.json"),
        }
    )
    try:
        seen: dict[str, set[str]] = {}
        for c in model.snapshot.customer_ids[:40]:
            for _ in range(2):
                body = {"customer_id": str(c), "placement": "cart", "k_cross_sell": 2}
                out = client.post("/recommend", json=body).json()
                seen.setdefault(str(c), set()).add(out["variant"])
                assert out["variant"] == split.assign(str(c)).name
                if out["variant"] == "weak":
                    assert out["policies"][s.CROSS_SELL] == "baseline:popular"
        assert all(len(v) == 1 for v in seen.values())
        assert {v for vs in seen.values() for v in vs} == {"champion", "weak"}
        card = client.get("/model").json()
        assert [v["name"] for v in card["experiment"]["variants"]] == ["champion", "weak"]
    finally:
        client.close()


def test_a_refreshed_snapshot_is_picked_up_without_restart(
    model_dir: Path, trained: Trained, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    client = _client(
        {MODEL_URI_ENV: str(folder), STORE_ENV: str(tmp_path / "store"), RELOAD_ENV: "0.2"}
    )
    try:
        before = client.get("/model").json()["snapshot_as_of"]
        later = pd.Timestamp(before) + pd.Timedelta(days=3)
        refresh_model_snapshot(folder, trained.shop_dir, until=later)
        deadline = time.monotonic() + 30
        while client.get("/model").json()["snapshot_as_of"] == before:
            assert time.monotonic() < deadline, "the refreshed snapshot was not picked up"
            body = {"customer_id": "C0001", "placement": "cart", "k_replenish": 1}
            assert client.post("/recommend", json=body).status_code == 200  # no downtime
            time.sleep(0.1)
        assert client.get("/model").json()["snapshot_as_of"] == str(later)
    finally:
        client.close()


@pytest.mark.server
def test_acknowledged_events_survive_a_killed_server(model_dir: Path, tmp_path: Path) -> None:
    """Post batches until the server is SIGKILLed; restart it on the same store: every
    event it acknowledged is there."""
    store = tmp_path / "store"
    acked: list[str] = []
    with xsell_serve(model_dir, tmp_path, args=["--store", str(store)]) as live:
        stop = threading.Event()

        def ingest() -> None:
            n = 0
            with httpx.Client(base_url=live.base, timeout=5) as http:
                while not stop.is_set():
                    batch = [_purchase(f"k{n + i}", "C0001", "P00001") for i in range(200)]
                    try:
                        r = http.post("/events", json={"events": batch})
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        acked.extend(e["event_id"] for e in batch)
                    n += len(batch)

        thread = threading.Thread(target=ingest)
        thread.start()
        deadline = time.monotonic() + 30
        while len(acked) < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(live.pid)
        os.killpg(pid, signal.SIGKILL)  # no clean shutdown: the worker dies mid-ingest
        stop.set()
        thread.join(timeout=30)
    assert len(acked) >= 1000
    with xsell_serve(model_dir, tmp_path, args=["--store", str(store)]) as again:
        assert httpx.get(f"{again.base}/readyz").json()["degraded"] == []
        stored = set(EventStore.open(store).tables()["events"]["event_id"])
    missing = [e for e in acked if e not in stored]
    assert not missing, f"{len(missing)} acknowledged events lost"


def test_serve_refuses_an_out_of_date_store_in_one_line(model_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    import sqlalchemy as sa

    from online import migrations
    from online.store import DB_FILE

    folder = tmp_path / "old-store"
    folder.mkdir()
    engine = sa.create_engine(f"sqlite:///{folder / DB_FILE}")
    with engine.begin() as conn:
        migrations.apply_migrations(conn, target=1)
    engine.dispose()
    cmd = [sys.executable, "-m", "serving", "--model", str(model_dir), "--store", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "xsell store migrate" in lines[-1]
    assert "Traceback" not in done.stderr

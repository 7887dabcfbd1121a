"""``GET /preview``: the renderer on the shared trained model, and the page in a real browser.

The unit tests call :mod:`serving.preview`'s pure functions on version 1 of the suite's shared
model (exported from its registry as a folder, like ``test_serving``). The ``browser`` test
starts ``xsell serve`` on 127.0.0.1 and drives the page with Playwright through Debian's
Chromium (``/usr/bin/chromium``; Playwright's own browser download cannot work here), then saves
``docs/preview.png``.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_server import export_shared_model, xsell_serve
from trained_model import MODEL_NAME, UNKNOWN_CUSTOMER, Trained, anchor_with_upsell

from features.data import schema as s
from features.recommend import placement_defaults
from features.tasks import all_tasks, tasks_at
from serving.preview import (
    RECENT,
    PreviewInputError,
    customers_with_orders,
    parse_request,
    pick_customer,
    preview_response,
    render_preview,
)
from training.model import XsellModel, load_serving_model

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "preview.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VERSION = f"{MODEL_NAME}/1"
INJECTION = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def model_dir(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared trained model's version 1, exported from its registry as a folder."""
    folder, version = export_shared_model(trained, tmp_path_factory.mktemp("preview") / "model")
    assert version == VERSION
    return folder


@pytest.fixture(scope="module")
def model(model_dir: Path) -> XsellModel:
    return load_serving_model(str(model_dir))[0]


def _page(model: XsellModel, **params: str) -> str:
    return render_preview(model, VERSION, parse_request(params, model))


def _section(page: str, task: str) -> str:
    start = page.index(f"<section id='task-{task}'")
    return page[start : page.index("</section>", start)]


# --------------------------------------------------------------------------- the renderer


def test_the_page_shows_every_task_with_the_served_lists(
    model: XsellModel, trained: Trained
) -> None:
    customer = pick_customer(model.snapshot, None)
    assert customer is not None
    anchor = anchor_with_upsell(model, trained.fits)
    page = _page(model, customer_id=customer, product_id=anchor)
    served = model.recommend_one(
        customer_id=customer,
        placement="product_page",
        product_id=anchor,
        cart=[],
        k=placement_defaults("product_page"),
    )
    assert set(served) == {s.CROSS_SELL, s.UPSELL}
    assert VERSION in page
    for task in all_tasks():
        assert f"id='task-{task.name}'" in page
    for task, result in served.items():
        section = _section(page, task)
        assert f"policy: {html.escape(result.policy)}" in section
        assert result.items, task
        positions = [section.index(f">{item.product_id}<") for item in result.items]
        assert positions == sorted(positions)  # best first, as served
        for item in result.items:
            assert html.escape(item.reason) in section
            assert f"{item.score:.3f}" in section
            assert f"{item.price:,.2f}" in section
    assert "not offered at product_page" in _section(page, s.REPLENISH)


def test_recent_purchases_are_the_ten_latest(model: XsellModel) -> None:
    snap = model.snapshot
    customer = pick_customer(snap, None)
    assert customer is not None
    cols, days = snap.history.last_bought.row(snap.customer_index[customer])
    page = _page(model, customer_id=customer)
    start = page.index("<section id=purchases>")
    purchases = page[start : page.index("</section>", start)]
    assert purchases.count("<tr>") == min(RECENT, len(cols)) + 1  # + the header row
    latest = cols[days.argmax()]
    assert f">{snap.product_ids[latest]}<" in purchases
    assert "<section id=views>" in page
    if len(snap.browsing.views_30.keys) == 0:
        assert "no browsing data" in page


@pytest.mark.parametrize("placement", s.PLACEMENTS)
def test_every_placement_renders(model: XsellModel, placement: str) -> None:
    page = _page(model, placement=placement)
    offered = {t.name for t in tasks_at(placement)}
    for task in all_tasks():
        section = _section(page, task.name)
        assert ("policy:" in section) == (task.name in offered), (placement, task.name)
    assert f"value='{placement}' selected" in page


def test_unknown_customer_gets_cold_start_lists_with_a_note(model: XsellModel) -> None:
    page = _page(model, customer_id=UNKNOWN_CUSTOMER, placement="cart")
    assert f"Unknown customer {UNKNOWN_CUSTOMER}: cold-start lists" in page
    served = model.recommend_one(
        customer_id=UNKNOWN_CUSTOMER,
        placement="cart",
        product_id=None,
        cart=[],
        k=placement_defaults("cart"),
    )[s.CROSS_SELL]
    assert served.fallback and served.items
    section = _section(page, s.CROSS_SELL)
    assert "Fallback: cold start" in section
    assert all(f">{item.product_id}<" in section for item in served.items)
    assert "<section id=purchases><h2>Recent purchases" in page and "unknown customer" in page


def test_ids_are_escaped(model: XsellModel) -> None:
    page = _page(model, customer_id=INJECTION, product_id=INJECTION, cart=f"{INJECTION},x'y")
    assert "<script" not in page.lower()
    assert html.escape(INJECTION) in page
    assert "x&#x27;y" in page  # quotes cannot close an attribute
    bad = preview_response(model, VERSION, {"placement": INJECTION})
    assert bad.status_code == 400
    assert "<script" not in bytes(bad.body).decode().lower()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"placement": "homepage"}, "placement"),
        ({"seed": "-1"}, "seed"),
        ({"seed": "abc"}, "seed"),
        ({"customer_id": "c" * 129}, "customer_id"),
        ({"cart": ",".join(["p"] * 201)}, "cart"),
    ],
)
def test_bad_input_is_a_400_page_naming_the_field(
    model: XsellModel, params: dict[str, str], field: str
) -> None:
    with pytest.raises(PreviewInputError) as err:
        parse_request(params, model)
    assert err.value.field == field
    response = preview_response(model, VERSION, params)
    body = bytes(response.body).decode()
    assert response.status_code == 400
    assert response.media_type == "text/html"
    assert f"<code>{field}</code>" in body and "Traceback" not in body


def test_random_customer_is_deterministic_and_has_orders(model: XsellModel) -> None:
    snap = model.snapshot
    picks = {pick_customer(snap, seed) for seed in range(20)}
    assert pick_customer(snap, 7) == pick_customer(snap, 7)
    assert len(picks) > 1
    for customer in picks:
        assert customer is not None
        assert snap.customers.n_orders[snap.customer_index[customer]] > 0
    req = parse_request({"seed": "7", "placement": "checkout"}, model)
    assert req.customer_id == pick_customer(snap, 7)
    page = render_preview(model, VERSION, req)
    assert "href='?seed=8&amp;placement=checkout'" in page


def test_product_page_defaults_to_a_product_of_the_last_order(model: XsellModel) -> None:
    snap = model.snapshot
    customer = pick_customer(snap, None)
    assert customer is not None
    req = parse_request({"customer_id": customer}, model)
    last = {str(snap.product_ids[p]) for p in snap.last_order(snap.customer_index[customer])}
    assert req.placement == "product_page" and req.product_id in last
    assert parse_request({"customer_id": customer, "placement": "cart"}, model).product_id is None


# --------------------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``xsell serve`` of ``model_dir`` on a free port of 127.0.0.1; yields its base URL."""
    with xsell_serve(model_dir, tmp_path_factory.mktemp("bentoml")) as live:
        yield live.base


def _showcase_customer(model: XsellModel) -> str:
    """For the screenshot: the first customer with several orders and recent views."""
    snap = model.snapshot
    for pos in customers_with_orders(snap).tolist():
        if snap.customers.n_orders[pos] >= 3 and len(snap.browsing.views_30.row(pos)[0]):
            return str(snap.customer_ids[pos])
    customer = pick_customer(snap, None)
    assert customer is not None
    return customer


@pytest.mark.server
def test_the_served_page_escapes_and_refuses_bad_input(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        ok = client.get("/preview", params={"customer_id": INJECTION})
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/html")
        assert "<script" not in ok.text.lower() and html.escape(INJECTION) in ok.text
        bad = client.get("/preview", params={"placement": "nowhere"})
        assert bad.status_code == 400 and "<code>placement</code>" in bad.text
        assert "Traceback" not in bad.text


@pytest.mark.server
@pytest.mark.browser
def test_preview_in_a_headless_browser(server: str, model: XsellModel, trained: Trained) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    snap = model.snapshot
    customer = _showcase_customer(model)
    anchor = anchor_with_upsell(model, trained.fits)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server}/preview")
            assert page.title() == "xsell preview"
            page.fill("#customer_id", customer)
            page.select_option("#placement", "product_page")
            page.fill("#product_id", anchor)
            page.fill("#cart", "")
            with page.expect_navigation():
                page.click("#show")
            assert f"customer_id={customer}" in page.url
            for task in (s.CROSS_SELL, s.UPSELL):
                section = page.locator(f"#task-{task}")
                assert section.locator("tbody tr").count() > 0, task
                assert "policy:" in section.inner_text()
            assert "not offered" in page.locator(f"#task-{s.REPLENISH}").inner_text()
            assert page.locator("#purchases tbody tr").count() > 0
            assert page.locator("#version").inner_text() == VERSION

            with page.expect_navigation():
                page.click("#random")
            picked = page.input_value("#customer_id")
            assert picked == pick_customer(snap, 1) and "seed=1" in page.url
            assert page.locator(f"#task-{s.CROSS_SELL} tbody tr").count() > 0

            # the tidy view for the README: the first form submission, again
            page.goto(f"{server}/preview?customer_id={customer}&product_id={anchor}")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000

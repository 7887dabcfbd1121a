"""``GET /preview``: a server-rendered HTML page showing what the service recommends.

Pick a customer (or a random one with orders), a placement, optionally the viewed product and
the cart; the page shows the customer's recent purchases and views from the model's snapshot and,
per task, the list ``POST /recommend`` would return for that request (the same
:meth:`XsellModel.recommend_one` call with the placement's default list sizes), with the served
policy and the model version.

Query parameters (all optional): ``customer_id``; ``seed`` (without a customer id: a seeded
random customer with orders; neither: the first customer with orders); ``placement`` (one of
``schema.PLACEMENTS``, default ``product_page``); ``product_id`` (product page default: a product
of the customer's last order, else the most popular one); ``cart`` (comma-separated ids).

Plain HTML with a little inline CSS, no scripts. Every id, name and message is escaped with
:func:`html.escape`; bad input answers a 400 page naming the field.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

import bentoml
import numpy as np
from starlette.requests import Request
from starlette.responses import HTMLResponse

from features.data import schema as s
from features.recommend import QueryResult, XsellModel, placement_defaults
from features.snapshot import EPOCH, FeatureSnapshot
from features.tasks import all_tasks, tasks_at

DEFAULT_PLACEMENT = "product_page"
RECENT = 10  # rows of recent purchases / views shown
MAX_ID_LENGTH = 128  # the API's limits (serving.service), repeated: service imports this module
MAX_CART = 200
MAX_SEED = 2**32 - 1


class PreviewInputError(ValueError):
    """A query parameter the page cannot use; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PreviewRequest:
    """A resolved preview request (defaults filled in, with notes on how they were chosen)."""

    customer_id: str
    placement: str
    product_id: str | None
    cart: list[str]
    seed: int | None = None
    form: Mapping[str, str] = field(default_factory=dict)  # what the user typed, for the form
    notes: list[str] = field(default_factory=list)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _day(days: float) -> str:
    """A snapshot day (float days since 1970-01-01) as a date."""
    stamp = EPOCH + np.timedelta64(round(float(days) * 86400), "s")
    return str(stamp.astype("datetime64[D]"))


def _category(snap: FeatureSnapshot, pos: int) -> str:
    return str(snap.category_levels[int(snap.products.category[pos])])


def customers_with_orders(snap: FeatureSnapshot) -> np.ndarray:
    """Positions of the customers with at least one order before the cut-off."""
    return np.flatnonzero(np.nan_to_num(np.asarray(snap.customers.n_orders, dtype=float)) > 0)


def pick_customer(snap: FeatureSnapshot, seed: int | None) -> str | None:
    """A customer with orders: seeded random, or the first one without a seed."""
    buyers = customers_with_orders(snap)
    if len(buyers) == 0:
        return None
    pos = 0 if seed is None else int(np.random.default_rng(seed).integers(len(buyers)))
    return str(snap.customer_ids[buyers[pos]])


def default_product(snap: FeatureSnapshot, customer_id: str) -> str | None:
    """A product of the customer's last order, else the most popular product."""
    last = snap.last_order(snap.customer_index.get(customer_id, -1))
    if len(last):
        return str(snap.product_ids[int(np.sort(last)[0])])
    if len(snap.top.global_top):
        return str(snap.product_ids[int(snap.top.global_top[0])])
    return None


def _id(params: Mapping[str, str], name: str) -> str | None:
    value = (params.get(name) or "").strip()
    if not value:
        return None
    if len(value) > MAX_ID_LENGTH:
        raise PreviewInputError(name, f"{name} is longer than {MAX_ID_LENGTH} characters")
    return value


def parse_request(params: Mapping[str, str], model: XsellModel) -> PreviewRequest:
    """Validate the query parameters and fill in the defaults.

    Raises:
        PreviewInputError: An unknown placement, a bad seed, an over-long id or cart.
    """
    snap = model.snapshot
    placement = (params.get("placement") or "").strip() or DEFAULT_PLACEMENT
    if placement not in s.PLACEMENTS:
        raise PreviewInputError(
            "placement",
            f"unknown placement {placement!r}; expected one of {', '.join(s.PLACEMENTS)}",
        )
    seed = None
    if raw_seed := (params.get("seed") or "").strip():
        if not raw_seed.isdigit() or int(raw_seed) > MAX_SEED:
            raise PreviewInputError("seed", f"seed must be an integer 0..{MAX_SEED}")
        seed = int(raw_seed)
    cart = [p.strip() for p in (params.get("cart") or "").split(",") if p.strip()]
    if len(cart) > MAX_CART:
        raise PreviewInputError("cart", f"cart holds more than {MAX_CART} products")
    if any(len(p) > MAX_ID_LENGTH for p in cart):
        raise PreviewInputError("cart", f"a cart id is longer than {MAX_ID_LENGTH} characters")
    notes = []
    customer_id = _id(params, "customer_id")
    if customer_id is None:
        customer_id = pick_customer(snap, seed)
        if customer_id is None:
            raise PreviewInputError(
                "customer_id", "no customer id given and no customer has orders"
            )
        how = f"random customer (seed {seed})" if seed is not None else "first customer with orders"
        notes.append(f"No customer id given: showing the {how}.")
    product_id = _id(params, "product_id")
    if product_id is None and placement == "product_page":
        product_id = default_product(snap, customer_id)
        if product_id is not None:
            notes.append(f"No product id given: viewing {product_id} (last order or most popular).")
    form = {
        "customer_id": customer_id,
        "placement": placement,
        "product_id": (params.get("product_id") or "").strip(),
        "cart": ",".join(cart),
    }
    return PreviewRequest(customer_id, placement, product_id, cart, seed, form, notes)


# --------------------------------------------------------------------------- rendering

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:#1f2933;background:#f4f6f8}
header{background:#243b53;color:#fff;padding:12px 24px;display:flex;align-items:baseline;gap:24px}
header h1{font-size:18px;margin:0}header span{opacity:.8}
main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #d9e2ec;border-radius:6px;padding:12px 16px;
margin-bottom:16px}
h2{font-size:15px;margin:0 0 8px}h2 small{font-weight:normal;color:#627d98}
form{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-end}
label{display:flex;flex-direction:column;font-size:12px;color:#486581;gap:2px}
input,select{font:inherit;padding:4px 6px;border:1px solid #bcccdc;border-radius:4px}
input[name=cart]{width:220px}
button,a.button{font:inherit;padding:5px 14px;border-radius:4px;border:1px solid #2680c2}
button{background:#2680c2;color:#fff}a.button{color:#2680c2;text-decoration:none;background:#fff}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eef2f6;white-space:nowrap}
th{font-size:12px;color:#627d98;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.reason{white-space:normal;width:45%}
.note{background:#fff8e1;border:1px solid #f0d58c;border-radius:4px;padding:6px 10px;margin:0 0 8px}
.muted{color:#829ab1}
.policy{display:inline-block;background:#e3f2fd;color:#0b4f8a;border-radius:10px;padding:0 8px;
font-size:12px}
"""


def _page(title: str, body: str, *, subtitle: str = "") -> str:
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{_esc(title)}</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><span>{subtitle}</span></header>"
        f"<main>{body}</main></body></html>\n"
    )


def _table(headers: Iterable[str], rows: Iterable[Iterable[tuple[str, str]]], *, empty: str) -> str:
    """A table; each cell is ``(css class, already escaped html)``; ``empty`` when no rows."""
    body = "".join(
        "<tr>" + "".join(f"<td class='{cls}'>{cell}</td>" for cls, cell in row) + "</tr>"
        for row in rows
    )
    if not body:
        return f"<p class=muted>{_esc(empty)}</p>"
    head = "".join(
        f"<th class=num>{_esc(h[1:])}</th>" if h.startswith("#") else f"<th>{_esc(h)}</th>"
        for h in headers
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_form(req: PreviewRequest) -> str:
    """The request form (GET to this page) and the "random customer" link."""
    form = req.form
    options = "".join(
        f"<option value='{_esc(p)}'{' selected' if p == req.placement else ''}>{_esc(p)}</option>"
        for p in s.PLACEMENTS
    )
    next_seed = 1 if req.seed is None else (req.seed + 1) % (MAX_SEED + 1)
    random_href = "?" + urlencode({"seed": next_seed, "placement": req.placement})
    return (
        "<section><form method=get>"
        "<label>Customer id<input name=customer_id id=customer_id "
        f"value='{_esc(form.get('customer_id', ''))}'></label>"
        f"<label>Placement<select name=placement id=placement>{options}</select></label>"
        "<label>Product id<input name=product_id id=product_id placeholder='default: last order' "
        f"value='{_esc(form.get('product_id', ''))}'></label>"
        "<label>Cart (comma-separated)<input name=cart id=cart placeholder='P00001,P00002' "
        f"value='{_esc(form.get('cart', ''))}'></label>"
        "<button type=submit id=show>Show recommendations</button>"
        f"<a id=random class=button href='{_esc(random_href)}'>random customer</a>"
        "</form></section>"
    )


def render_history(model: XsellModel, customer_id: str) -> str:
    """The customer's 10 most recent purchases and most viewed products (last 30 days)."""
    snap = model.snapshot
    customer = snap.customer_index.get(customer_id, -1)
    cols, last = snap.history.last_bought.row(customer)
    order = np.lexsort((cols, -last))[:RECENT]
    times = snap.history.bought.get(np.full(len(order), customer, dtype=np.int64), cols[order])
    bought = [
        [
            ("", _esc(snap.product_ids[p])),
            ("", _esc(_category(snap, p))),
            ("num", f"{snap.products.price[p]:,.2f}"),
            ("num", f"{n:.0f}"),
            ("", _esc(_day(day))),
        ]
        for p, day, n in zip(
            cols[order].tolist(), last[order].tolist(), times.tolist(), strict=True
        )
    ]
    purchases = _table(
        ["product", "category", "#price", "#orders", "last bought"],
        bought,
        empty="no purchases before the cut-off" if customer >= 0 else "unknown customer",
    )
    views_table = snap.browsing.views_30
    vcols, vals = views_table.row(customer)
    vorder = np.lexsort((vcols, -vals))[:RECENT]
    viewed = [
        [
            ("", _esc(snap.product_ids[p])),
            ("", _esc(_category(snap, p))),
            ("num", f"{snap.products.price[p]:,.2f}"),
            ("num", f"{n:.0f}"),
        ]
        for p, n in zip(vcols[vorder].tolist(), vals[vorder].tolist(), strict=True)
    ]
    if len(views_table.keys) == 0:
        empty_views = "no browsing data (the shop has no events)"
    else:
        empty_views = "no browsing data for this customer in the last 30 days"
    views = _table(["product", "category", "#price", "#views"], viewed, empty=empty_views)
    return (
        "<div class=grid>"
        f"<section id=purchases><h2>Recent purchases <small>(last {RECENT})</small></h2>"
        f"{purchases}</section>"
        f"<section id=views><h2>Recent views <small>(last 30 days, most viewed)</small></h2>"
        f"{views}</section></div>"
    )


def render_task(
    model: XsellModel, task: str, description: str, result: QueryResult | None, why_empty: str
) -> str:
    """One task's section: its list (product, category, price, reason, score) and policy."""
    snap = model.snapshot
    if result is None:
        body = f"<p class=muted>{_esc(why_empty)}</p>"
        policy = ""
    else:
        rows = [
            [
                ("num", str(rank)),
                ("", _esc(item.product_id)),
                ("", _esc(_category(snap, snap.product_index[item.product_id]))),
                ("num", f"{item.price:,.2f}"),
                ("reason", _esc(item.reason)),
                ("num", f"{item.score:.3f}"),
            ]
            for rank, item in enumerate(result.items, 1)
        ]
        body = _table(
            ["#", "product", "category", "#price", "reason", "#score"],
            rows,
            empty="empty list (every candidate was filtered out)",
        )
        if result.fallback and result.items:
            body = "<p class=note>Fallback: cold start (popularity-based).</p>" + body
        body += "".join(f"<p class=muted>warning: {_esc(w)}</p>" for w in result.warnings)
        policy = f" <span class=policy>policy: {_esc(result.policy)}</span>"
    return (
        f"<section id='task-{_esc(task)}' class=task>"
        f"<h2>{_esc(task)}{policy} <small>{_esc(description)}</small></h2>{body}</section>"
    )


def render_preview(model: XsellModel, version: str, req: PreviewRequest) -> str:
    """The whole page for a resolved request."""
    snap = model.snapshot
    wanted = placement_defaults(req.placement)
    results = model.recommend_one(
        customer_id=req.customer_id,
        placement=req.placement,
        product_id=req.product_id,
        cart=list(req.cart),
        k=wanted,
    )
    offered = {t.name for t in tasks_at(req.placement)}
    served = {t.name for t in model.tasks}
    sections = []
    for task in all_tasks():
        if task.name not in offered:
            why = f"not offered at {req.placement}"
        elif task.name not in served:
            why = "this model version does not serve this task"
        elif task.needs_anchor and req.product_id is None:
            why = "needs a viewed product (product id)"
        else:
            why = "no items asked for"
        sections.append(
            render_task(model, task.name, task.description, results.get(task.name), why)
        )
    notes = list(req.notes)
    known = req.customer_id in snap.customer_index
    if not known:
        notes.append(
            f"Unknown customer {req.customer_id}: cold-start lists (popular products, no history)."
        )
    context = (
        f"customer <b>{_esc(req.customer_id)}</b> · placement <b>{_esc(req.placement)}</b>"
        f" · viewed product <b>{_esc(req.product_id or '—')}</b>"
        f" · cart <b>{_esc(', '.join(req.cart) or '—')}</b>"
    )
    body = (
        render_form(req)
        + "".join(f"<p class=note>{_esc(n)}</p>" for n in notes)
        + f"<p id=context>{context}</p>"
        + render_history(model, req.customer_id)
        + f"<div class=tasks>{''.join(sections)}</div>"
    )
    subtitle = (
        f"model <b id=version>{_esc(version)}</b> · data as of "
        f"{_esc(snap.as_of_timestamp.date())} · {snap.n_customers:,} customers · "
        f"{snap.n_products:,} products"
    )
    return _page("xsell preview", body, subtitle=subtitle)


def render_error(field_name: str, message: str) -> str:
    """The 400 page: which field is wrong and why, with a link back."""
    body = (
        f"<section id=error><h2>Bad request: <code>{_esc(field_name)}</code></h2>"
        f"<p>{_esc(message)}</p><p><a href='?'>back to the preview</a></p></section>"
    )
    return _page("xsell preview: bad request", body)


def preview_response(model: XsellModel, version: str, params: Mapping[str, str]) -> HTMLResponse:
    """The page for ``params``, or a 400 page naming the bad field."""
    try:
        req = parse_request(params, model)
    except PreviewInputError as err:
        return HTMLResponse(render_error(err.field, str(err)), status_code=400)
    return HTMLResponse(render_preview(model, version, req))


async def preview_page(request: Request) -> HTMLResponse:
    """Starlette handler of ``GET /preview`` (mounted next to ``/model`` in the service)."""
    service = bentoml.get_current_service()
    return preview_response(service.model, service.version, request.query_params)

"""Each business rule and its task scope, on real candidates of a small synthetic shop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features import rules
from features.batch import QueryBatch, single_query
from features.data import schema as s
from features.data.io import load_shop
from features.data.synthetic import generate_shop
from features.guardrails import allowed, apply_guardrails, reasons
from features.matrix import FeatureMatrix, build_features
from features.snapshot import FeatureSnapshot, build_snapshot, to_days
from features.sources import SOURCES, Source, register_source, source_names
from features.tasks import all_tasks, get_task, task_names

CUTOFF = pd.Timestamp("2025-10-01")


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> FeatureSnapshot:
    """A snapshot of a 600-customer synthetic shop."""
    folder = tmp_path_factory.mktemp("guard")
    generate_shop(folder, n_customers=600, seed=11)
    return build_snapshot(load_shop(folder), as_of=CUTOFF)


def _busy_customer(snap: FeatureSnapshot) -> tuple[str, np.ndarray]:
    owned = snap.history.owned.matrix
    durable = ~snap.products.is_consumable
    durable_counts = np.asarray((owned[:, durable] > 0).sum(axis=1)).ravel()
    c = int(np.argmax(durable_counts))
    return str(snap.customer_ids[c]), owned[c].indices


def _query(snap: FeatureSnapshot, task: str, **kw: object) -> tuple[QueryBatch, FeatureMatrix]:
    batch = single_query(snap, task=task, as_of=float(to_days(CUTOFF)), **kw)  # type: ignore[arg-type]
    return batch, build_features(batch, snap)


def _cart_query(
    snap: FeatureSnapshot, task: str = s.CROSS_SELL
) -> tuple[QueryBatch, FeatureMatrix]:
    customer, _ = _busy_customer(snap)
    cart = [str(snap.product_ids[p]) for p in snap.top.global_top[:3]]
    return _query(
        snap,
        task,
        customer_id=customer,
        placement="cart",
        anchor_product_id=None,
        cart_product_ids=cart,
    )


def test_not_in_context_flags_cart_products(snap: FeatureSnapshot) -> None:
    batch, fm = _cart_query(snap)
    q = np.r_[fm.query, 0]
    p = np.r_[fm.product, batch.context[:1]]
    ok = rules.not_in_context(batch, snap, q, p)
    assert not ok[-1]
    assert ok[:-1].all()


def test_out_of_stock_never_recommended(snap: FeatureSnapshot) -> None:
    batch, fm = _cart_query(snap)
    stock = snap.products.in_stock.copy()
    stock[fm.product[:5]] = False
    out = dataclasses.replace(snap, products=dataclasses.replace(snap.products, in_stock=stock))
    sel = apply_guardrails(batch, out, fm, np.arange(len(fm), 0, -1, dtype=float), np.asarray([50]))
    assert not set(fm.product[sel.rows]) & set(fm.product[:5])
    assert not rules.in_stock(batch, out, fm.query, fm.product)[:5].any()
    assert len(sel.rows) > 0


def test_owned_durables_suppressed_consumables_kept(snap: FeatureSnapshot) -> None:
    customer, owned = _busy_customer(snap)
    batch, _ = _query(
        snap,
        s.UPSELL,
        customer_id=customer,
        placement="product_page",
        anchor_product_id=None,
        cart_product_ids=[],
    )
    ok = rules.not_owned_durable(batch, snap, np.zeros(len(owned), dtype=np.int64), owned)
    consumable = snap.products.is_consumable[owned]
    assert (ok == consumable).all()
    assert (~consumable).any()


def test_cross_sell_recommends_only_new_products(snap: FeatureSnapshot) -> None:
    _, owned = _busy_customer(snap)
    batch, fm = _cart_query(snap)
    assert len(fm) > 0
    assert not set(fm.product.tolist()) & set(owned.tolist())
    ok = rules.new_to_customer(batch, snap, np.zeros(len(owned), dtype=np.int64), owned)
    assert not ok.any()


def test_replenish_recommends_only_bought_consumables(snap: FeatureSnapshot) -> None:
    _, owned = _busy_customer(snap)
    batch, fm = _cart_query(snap, s.REPLENISH)
    assert len(fm) > 0
    sel = apply_guardrails(batch, snap, fm, np.linspace(1, 0, len(fm)), np.asarray([10]))
    picked = fm.product[sel.rows]
    assert len(picked) > 0
    assert set(picked.tolist()) <= set(owned.tolist())
    assert snap.products.is_consumable[picked].all()
    assert not set(picked.tolist()) & set(batch.context.tolist())


def test_upsell_price_cap(snap: FeatureSnapshot) -> None:
    fam, price = snap.products.family, snap.products.price
    anchor = int(np.argmin(np.where(np.bincount(fam)[fam] >= 3, price, np.inf)))
    same = np.flatnonzero(fam == fam[anchor])
    batch, _ = _query(
        snap,
        s.UPSELL,
        customer_id="nobody",
        placement="product_page",
        anchor_product_id=str(snap.product_ids[anchor]),
        cart_product_ids=[],
    )
    ok = rules.within_uplift_cap(batch, snap, np.zeros(len(same), dtype=np.int64), same)
    expected = (price[same] > price[anchor]) & (price[same] <= 1.25 * price[anchor] + 1e-9)
    assert (ok == expected).all()


def test_cross_sell_price_cap_relative_to_cart(snap: FeatureSnapshot) -> None:
    batch, fm = _cart_query(snap)
    cart_value = snap.products.price[batch.context].sum()
    ok = rules.within_cart_price_cap(batch, snap, fm.query, fm.product)
    price = snap.products.price[fm.product]
    assert (ok == (price <= snap.config.cross_sell_price_cap * cart_value + 1e-9)).all()


def test_apply_guardrails_k_diversity_and_order(snap: FeatureSnapshot) -> None:
    batch, fm = _cart_query(snap)
    score = np.linspace(1, 0, len(fm))
    sel = apply_guardrails(batch, snap, fm, score, np.asarray([6]))
    assert 0 < len(sel.rows) <= 6
    assert list(sel.rank) == list(range(1, len(sel.rows) + 1))
    assert allowed(batch, snap, fm)[sel.rows].all()
    cats = snap.products.category[fm.product[sel.rows]]
    assert np.bincount(cats).max() <= snap.config.max_per_category
    assert (np.diff(score[sel.rows]) <= 0).all()
    texts = reasons(batch, snap, fm, sel.rows)
    assert len(texts) == len(sel.rows) and all(texts)


def test_product_page_gets_three_upsells_when_the_family_has_them(snap: FeatureSnapshot) -> None:
    """Diversity is scoped to lists of different products: an upsell list fills its k with
    versions of one family (they all share the anchor's category)."""
    fam, price, stock = snap.products.family, snap.products.price, snap.products.in_stock
    cap = 1 + snap.config.upsell_max_uplift
    anchors = [
        a
        for a in range(snap.n_products)
        if np.sum((fam == fam[a]) & (price > price[a]) & (price <= price[a] * cap) & stock) >= 3
    ]
    assert anchors, "the synthetic shop has families with three versions within the cap"
    batch, fm = _query(
        snap,
        s.UPSELL,
        customer_id="nobody",
        placement="product_page",
        anchor_product_id=str(snap.product_ids[anchors[0]]),
        cart_product_ids=[],
    )
    sel = apply_guardrails(batch, snap, fm, np.linspace(1, 0, len(fm)), np.asarray([3]))
    assert len(sel.rows) == 3
    assert len(set(snap.products.category[fm.product[sel.rows]].tolist())) == 1
    assert snap.config.max_per_category < 3


def test_guardrail_scopes_are_explicit() -> None:
    scopes = {t.name: (set(t.guardrails), t.diverse) for t in all_tasks()}
    assert scopes[s.CROSS_SELL] == (
        {rules.not_in_context, rules.in_stock, rules.new_to_customer, rules.within_cart_price_cap},
        True,
    )
    assert scopes[s.UPSELL] == (
        {rules.not_in_context, rules.in_stock, rules.not_owned_durable, rules.within_uplift_cap},
        False,
    )
    assert scopes[s.REPLENISH] == (
        {rules.not_in_context, rules.in_stock, rules.bought_consumable, rules.not_just_bought},
        True,
    )


def test_every_source_has_a_reason_and_a_registered_task() -> None:
    assert task_names() == (s.CROSS_SELL, s.UPSELL, s.REPLENISH)
    for source in SOURCES.values():
        assert source.reason.strip(), source.name
        assert source.tasks and source.tasks <= set(task_names()), source.name
        if source.names_product:
            assert "{product}" in source.reason, source.name
    for task in task_names():
        assert source_names(task), task
        assert get_task(task).baselines, task


def test_a_source_name_cannot_be_registered_twice() -> None:
    twin = dataclasses.replace(SOURCES["cooc"])
    with pytest.raises(ValueError, match="registered twice"):
        register_source(twin)
    assert isinstance(SOURCES["cooc"], Source)

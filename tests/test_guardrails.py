"""Each business rule applied after ranking, on real candidates of a small synthetic shop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features.batch import QueryBatch, single_query
from features.data import schema as s
from features.data.io import load_shop
from features.data.synthetic import generate_shop
from features.guardrails import (
    allowed,
    apply_guardrails,
    in_stock,
    not_in_context,
    not_owned_durable,
    reasons,
    within_price_caps,
)
from features.matrix import FeatureMatrix, build_features
from features.snapshot import FeatureSnapshot, build_snapshot, to_days

CUTOFF = pd.Timestamp("2025-10-01")


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> FeatureSnapshot:
    """A snapshot of a 600-customer synthetic shop."""
    folder = tmp_path_factory.mktemp("guard")
    generate_shop(folder, n_customers=600, seed=11)
    return build_snapshot(load_shop(folder), as_of=CUTOFF)


def _busy_customer(snap: FeatureSnapshot) -> tuple[str, np.ndarray]:
    owned = snap.matrices["owned"]
    durable_counts = np.asarray((owned[:, ~snap.arrays["is_consumable"]] > 0).sum(axis=1)).ravel()
    c = int(np.argmax(durable_counts))
    return str(snap.customer_ids[c]), owned[c].indices


def _query(snap: FeatureSnapshot, task: str, **kw: object) -> tuple[QueryBatch, FeatureMatrix]:
    batch = single_query(snap, task=task, as_of=float(to_days(CUTOFF)), **kw)  # type: ignore[arg-type]
    return batch, build_features(batch, snap)


def _cart_query(snap: FeatureSnapshot) -> tuple[QueryBatch, FeatureMatrix]:
    customer, _ = _busy_customer(snap)
    top = snap.arrays["global_top"][:3]
    cart = [str(snap.product_ids[p]) for p in top]
    return _query(
        snap,
        s.CROSS_SELL,
        customer_id=customer,
        placement="cart",
        anchor_product_id=None,
        cart_product_ids=cart,
    )


def test_not_in_context_flags_cart_products(snap: FeatureSnapshot) -> None:
    batch, fm = _cart_query(snap)
    # force a cart product into the candidate rows to check the rule catches it
    fake = dataclasses.replace(
        fm, product=np.r_[fm.product, batch.context[:1]], query=np.r_[fm.query, 0]
    )
    ok = not_in_context(batch, snap, fake)
    assert not ok[-1]
    assert ok[:-1].all()


def test_out_of_stock_never_recommended(snap: FeatureSnapshot) -> None:
    batch, fm = _cart_query(snap)
    stock = snap.arrays["in_stock"]
    changed = stock.copy()
    changed[fm.product[:5]] = False
    snap.arrays["in_stock"] = changed
    try:
        sel = apply_guardrails(
            batch, snap, fm, np.arange(len(fm), 0, -1, dtype=float), np.asarray([50])
        )
        assert not set(fm.product[sel.rows]) & set(fm.product[:5])
        assert not in_stock(batch, snap, fm)[:5].any()
    finally:
        snap.arrays["in_stock"] = stock


def test_owned_durables_suppressed_consumables_kept(snap: FeatureSnapshot) -> None:
    customer, owned = _busy_customer(snap)
    batch, fm = _query(
        snap,
        s.CROSS_SELL,
        customer_id=customer,
        placement="product_page",
        anchor_product_id=None,
        cart_product_ids=[],
    )
    fake = dataclasses.replace(
        fm, product=owned.astype(np.int64), query=np.zeros(len(owned), dtype=np.int64)
    )
    ok = not_owned_durable(batch, snap, fake)
    consumable = snap.arrays["is_consumable"][owned]
    assert (ok == consumable).all()
    assert (~consumable).any()


def test_upsell_price_cap(snap: FeatureSnapshot) -> None:
    fam = snap.arrays["family"]
    anchor = int(np.argmin(np.where(np.bincount(fam)[fam] >= 3, snap.arrays["price"], np.inf)))
    same = np.flatnonzero(fam == fam[anchor])
    batch, _ = _query(
        snap,
        s.UPSELL,
        customer_id="nobody",
        placement="product_page",
        anchor_product_id=str(snap.product_ids[anchor]),
        cart_product_ids=[],
    )
    fake = FeatureMatrix(
        query=np.zeros(len(same), dtype=np.int64),
        product=same,
        X=np.zeros((len(same), 0), np.float32),
        columns=[],
        best_source=np.zeros(len(same), dtype=np.int64),
        reason_product=np.full(len(same), -1),
        sources=("family_popular",),
    )
    ok = within_price_caps(batch, snap, fake)
    price = snap.arrays["price"]
    expected = (price[same] > price[anchor]) & (price[same] <= 1.25 * price[anchor] + 1e-9)
    assert (ok == expected).all()


def test_cross_sell_price_cap_relative_to_cart(snap: FeatureSnapshot) -> None:
    batch, fm = _cart_query(snap)
    cart_value = snap.arrays["price"][batch.context].sum()
    ok = within_price_caps(batch, snap, fm)
    price = snap.arrays["price"][fm.product]
    assert (ok == (price <= snap.config.cross_sell_price_cap * cart_value + 1e-9)).all()


def test_apply_guardrails_k_diversity_and_order(snap: FeatureSnapshot) -> None:
    batch, fm = _cart_query(snap)
    score = np.linspace(1, 0, len(fm))
    sel = apply_guardrails(batch, snap, fm, score, np.asarray([6]))
    assert 0 < len(sel.rows) <= 6
    assert list(sel.rank) == list(range(1, len(sel.rows) + 1))
    assert allowed(batch, snap, fm)[sel.rows].all()
    cats = snap.arrays["category"][fm.product[sel.rows]]
    assert np.bincount(cats).max() <= snap.config.max_per_category
    assert (np.diff(score[sel.rows]) <= 0).all()
    texts = reasons(batch, snap, fm, sel.rows)
    assert len(texts) == len(sel.rows) and all(texts)

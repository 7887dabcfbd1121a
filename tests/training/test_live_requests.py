"""Live activity in the request pipeline (features/live.py) and the snapshot refresh, on the
shared trained model: what a customer did after the snapshot changes the next answer."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from trained_model import Trained

from features.data import schema as s
from features.live import NO_ACTIVITY, live_activity
from features.recommend import (
    SNAPSHOT_POINTER,
    ModelLoadError,
    XsellModel,
    current_snapshot,
    default_context,
)
from online.records import PURCHASE, LiveEvent
from training.model import refresh_model_snapshot


def _after(model: XsellModel, minutes: int) -> datetime:
    return model.snapshot.as_of_timestamp.to_pydatetime() + timedelta(minutes=minutes)


def _event(model: XsellModel, kind: str, product: str, minutes: int, **kw: object) -> LiveEvent:
    return LiveEvent(
        event_id=f"e{minutes}-{kind}-{product}",
        event_type=kind,
        customer_id="C",
        product_id=product,
        ts=_after(model, minutes),
        **kw,  # type: ignore[arg-type]
    )


def _pid(model: XsellModel, position: int) -> str:
    return str(model.snapshot.product_ids[position])


def test_live_activity_reads_purchases_cart_and_views(model: XsellModel) -> None:
    a, b, c = (_pid(model, i) for i in (1, 2, 3))
    before = LiveEvent("old", PURCHASE, "C", c, _after(model, -60), "o0", 1.0)
    events = [
        before,  # at or before the cut-off: already in the snapshot, ignored
        _event(model, s.ADD_TO_CART, a, 1),
        _event(model, s.ADD_TO_CART, b, 2),
        _event(model, s.REMOVE_FROM_CART, a, 3),
        _event(model, s.VIEW, c, 4),
        _event(model, s.VIEW, c, 5),
        _event(model, PURCHASE, a, 6, order_id="o1", unit_price=2.0),
        _event(model, "view", "P-unknown", 7),
    ]
    live = live_activity(model.snapshot, reversed(events))
    assert live.n_events == 7 and live.unknown_products == 1
    assert live.bought.tolist() == [1]
    assert live.last_order.tolist() == [1]
    assert live.cart.tolist() == [2]  # a added, removed, then bought: only b is in the cart
    assert live.count("viewed", np.array([3, 1])).tolist() == [2.0, 0.0]
    assert not NO_ACTIVITY and live


def test_a_product_bought_after_the_snapshot_is_not_offered_again(model: XsellModel) -> None:
    snap = model.snapshot
    customer = str(snap.customer_ids[0])
    cart = [_pid(model, int(snap.top.global_top[0]))]
    ask = {"customer_id": customer, "placement": "cart", "product_id": None, "cart": cart}
    first = model.recommend_one(**ask, k={s.CROSS_SELL: 3})[s.CROSS_SELL].items
    assert first, "the cart should get cross-sells"
    bought = first[0].product_id
    live = live_activity(
        snap,
        [LiveEvent("e1", PURCHASE, customer, bought, _after(model, 5), "o1", first[0].price)],
    )
    again = model.recommend_one(**ask, k={s.CROSS_SELL: 3}, live=live)[s.CROSS_SELL].items
    assert bought not in {r.product_id for r in again}
    # the same product is offered again without the live purchase: the state made the change
    assert bought in {
        r.product_id for r in model.recommend_one(**ask, k={s.CROSS_SELL: 3})[s.CROSS_SELL].items
    }


def test_the_live_cart_and_last_order_are_the_context(model: XsellModel) -> None:
    snap = model.snapshot
    customer = str(snap.customer_ids[1])
    a, b = _pid(model, 5), _pid(model, 6)
    live = live_activity(
        snap,
        [
            _event(model, s.ADD_TO_CART, a, 1),
            _event(model, PURCHASE, b, 2, order_id="o9", unit_price=1.0),
        ],
    )
    assert default_context(snap, customer, "cart", None, [], live) == [a]
    assert default_context(snap, customer, "post_purchase", None, [], live) == [b]
    assert default_context(snap, customer, "cart", None, [b], live) == [b]  # the request wins
    stored = default_context(snap, customer, "post_purchase", None, [])
    assert stored != [b]  # without live events: the snapshot's last order


def test_a_consumable_just_bought_is_not_due(model: XsellModel) -> None:
    snap = model.snapshot
    for c in snap.customer_ids[:300]:
        ask = {"customer_id": str(c), "placement": "post_purchase", "product_id": None, "cart": []}
        items = model.recommend_one(**ask, k={s.REPLENISH: 3}).get(s.REPLENISH)
        if items is not None and items.items and items.items[0].reason != "popular right now":
            break
    else:
        pytest.skip("no customer with replenishment candidates")
    due = items.items[0].product_id
    live = live_activity(snap, [LiveEvent("e", PURCHASE, str(c), due, _after(model, 1), "o", 1.0)])
    again = model.recommend_one(**ask, k={s.REPLENISH: 3}, live=live)[s.REPLENISH].items
    assert due not in {r.product_id for r in again}


def test_refresh_swaps_the_snapshot_for_the_same_rankers(
    model_dir: Path, trained: Trained, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    old = XsellModel.load(folder)
    later = old.snapshot.as_of_timestamp + pd.Timedelta(days=7)
    snapshot = refresh_model_snapshot(folder, trained.shop_dir, until=later)
    assert snapshot.as_of_timestamp == later
    assert current_snapshot(folder).name == (folder / SNAPSHOT_POINTER).read_text()
    fresh = XsellModel.load(folder)
    assert fresh.snapshot.as_of_timestamp == later
    assert fresh.meta["run_id"] == old.meta["run_id"]  # same rankers
    for task in old.boosters:
        assert fresh.boosters[task].model_to_string() == old.boosters[task].model_to_string()
    with pytest.raises(ValueError, match="not later"):
        refresh_model_snapshot(folder, trained.shop_dir, until=later)
    with pytest.raises(ModelLoadError):
        refresh_model_snapshot(tmp_path, trained.shop_dir, until=later + pd.Timedelta(days=1))

"""Batch scoring (``training/recommend.py``, ``xsell recommend``) and the one-query path of the
shared model."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401
from trained_model import (
    MODEL_NAME,
    UNKNOWN_CUSTOMER,
    Trained,
    anchor_with_upsell,
)
from typer.testing import CliRunner

from features.batch import ANCHOR, AS_OF, CART, PLACEMENT, QUERY_ID, K
from features.candidates import collect_candidates
from features.data import schema as s
from features.recommend import OUTPUT_COLUMNS, POPULAR_REASON, placement_defaults
from features.rules import all_of
from features.tasks import get_task
from training import cli
from training.model import XsellModel
from training.recommend import read_queries
from training.tracking import CHAMPION, tracking_uri


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    out = frame.assign(**{CART: frame[CART].map(json.dumps), ANCHOR: frame[ANCHOR].fillna("")})
    out.to_csv(path, index=False)
    return path


def _check_recommendations(out: pd.DataFrame, queries: pd.DataFrame) -> None:
    """The behavioural contract of ``xsell recommend`` output."""
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert set(out[QUERY_ID]) <= set(queries[QUERY_ID])
    q = queries.set_index(QUERY_ID)
    for (qid, task), rows in out.groupby([QUERY_ID, "task"]):
        query = q.loc[qid]
        assert task in placement_defaults(query[PLACEMENT])
        if task == s.UPSELL:
            assert query[PLACEMENT] == "product_page"
            assert isinstance(query[ANCHOR], str)
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert len(rows) <= int(query[K])
        assert rows["product_id"].is_unique
        assert rows["score"].is_monotonic_decreasing
        blocked = set(query[CART]) | ({query[ANCHOR]} if isinstance(query[ANCHOR], str) else set())
        assert not blocked & set(rows["product_id"]), (qid, task)
    upsell_queries = set(out.loc[out["task"] == s.UPSELL, QUERY_ID])
    with_anchor = queries.loc[queries[ANCHOR].notna(), QUERY_ID]
    assert upsell_queries, "no query got upsell rows"
    assert upsell_queries <= set(with_anchor)
    unknown = queries.loc[queries[s.CUSTOMER_ID] == UNKNOWN_CUSTOMER, QUERY_ID]
    cross = set(out.loc[out["task"] == s.CROSS_SELL, QUERY_ID])
    assert set(unknown) <= cross, "unknown customers must still get cross-sell rows"


# ------------------------------------------------------------------------------------------
# 8. xsell recommend
# ------------------------------------------------------------------------------------------


def test_recommend_contract_on_a_mixed_batch(model: XsellModel, queries: pd.DataFrame) -> None:
    out = model.recommend(queries)
    _check_recommendations(out, queries)
    empty = model.recommend(queries.iloc[:0])
    assert list(empty.columns) == list(OUTPUT_COLUMNS)
    assert len(empty) == 0


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_recommend_command_with_the_champion(
    trained: Trained,
    model: XsellModel,
    queries: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(trained.root))
    path = tmp_path / f"queries.{fmt}"
    if fmt == "csv":
        _write_csv(queries, path)
    else:
        queries.to_parquet(path, index=False)
    out_path = tmp_path / "out" / f"recs.{fmt}"
    result = CliRunner().invoke(
        cli.app,
        [
            "recommend",
            "--data",
            str(trained.shop_dir),
            "--queries",
            str(path),
            "--out",
            str(out_path),
            "--model",
            f"models:/{MODEL_NAME}@{CHAMPION}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"for {len(queries)} queries" in result.output
    out = (
        pd.read_csv(out_path, dtype={QUERY_ID: str}) if fmt == "csv" else pd.read_parquet(out_path)
    )
    _check_recommendations(out, queries)
    expected = model.recommend(queries)
    pd.testing.assert_frame_equal(
        out[["query_id", "task", "rank", "product_id"]],
        expected[["query_id", "task", "rank", "product_id"]],
        check_dtype=False,
    )
    np.testing.assert_allclose(out["score"], expected["score"], rtol=1e-6)


@pytest.mark.parametrize("column", [PLACEMENT, CART, K])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_read_queries_missing_column_is_a_clear_error(
    queries: pd.DataFrame, tmp_path: Path, column: str, fmt: str
) -> None:
    frame = queries.drop(columns=[column])
    path = tmp_path / f"queries.{fmt}"
    if fmt == "csv":
        frame.assign(**{ANCHOR: frame[ANCHOR].fillna("")}).to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    with pytest.raises(ValueError, match=rf"missing column\(s\) \['{column}'\]"):
        read_queries(path)


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        pytest.param(CART, "P1;P2", "JSON lists", id="cart-not-json"),
        pytest.param(K, "2.5", "whole number", id="k-fraction"),
        pytest.param(K, "0", "whole number", id="k-zero"),
        pytest.param(AS_OF, "yesterday", "as_of", id="as-of"),
    ],
)
def test_read_queries_rejects_malformed_values(
    queries: pd.DataFrame, tmp_path: Path, column: str, value: str, match: str
) -> None:
    raw = pd.read_csv(_write_csv(queries, tmp_path / "ok.csv"), dtype=str, keep_default_na=False)
    raw.loc[1, column] = value
    raw.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=match):
        read_queries(tmp_path / "bad.csv")


def test_read_queries_round_trips_a_csv(queries: pd.DataFrame, tmp_path: Path) -> None:
    got = read_queries(_write_csv(queries, tmp_path / "queries.csv"))
    assert got[CART].tolist() == queries[CART].tolist()
    pd.testing.assert_series_equal(got[ANCHOR].isna(), queries[ANCHOR].isna())
    assert got[ANCHOR].dropna().tolist() == queries[ANCHOR].dropna().tolist()
    assert got[K].tolist() == queries[K].tolist()
    assert (got[AS_OF] == queries[AS_OF]).all()


def test_recommend_rejects_an_unknown_placement(model: XsellModel, queries: pd.DataFrame) -> None:
    bad = queries.assign(**{PLACEMENT: queries[PLACEMENT].where(queries.index != 2, "homepage")})
    with pytest.raises(ValueError, match="homepage"):
        model.recommend(bad)


def test_recommend_command_missing_column_exits_2(
    trained: Trained,
    model_dir: Path,
    queries: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(trained.root))  # not the repo's
    path = _write_csv(queries.drop(columns=[K]), tmp_path / "queries.csv")
    argv = ["xsell", "recommend", "--data", str(trained.shop_dir), "--queries", str(path)]
    argv += ["--out", str(tmp_path / "recs.csv"), "--model", str(model_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "missing column" in err
    assert "'k'" in err
    assert not (tmp_path / "recs.csv").exists()


# ------------------------------------------------------------------------------------------
# 9. The one-query path
# ------------------------------------------------------------------------------------------


def test_recommend_one_unknown_customer_falls_back(model: XsellModel) -> None:
    got = model.recommend_one(
        customer_id=UNKNOWN_CUSTOMER,
        placement="cart",
        product_id=None,
        cart=[],
        k={s.CROSS_SELL: 3, s.UPSELL: 3},
    )
    assert set(got) == {s.CROSS_SELL}
    result = got[s.CROSS_SELL]
    assert result.fallback is True
    assert 0 < len(result.items) <= 3
    assert all(item.price > 0 for item in result.items)


def test_recommend_one_known_customer_no_fallback_and_cart_excluded(
    model: XsellModel, trained: Trained
) -> None:
    snap = model.snapshot
    customer = str(snap.customer_ids[0])
    cart = [str(snap.product_ids[int(p)]) for p in snap.top.global_top[:2]]
    anchor = anchor_with_upsell(model, trained.fits)
    got = model.recommend_one(
        customer_id=customer,
        placement="product_page",
        product_id=anchor,
        cart=[*cart, "P-unknown"],
        k={s.CROSS_SELL: 3, s.UPSELL: 2},
    )
    assert set(got) == {s.CROSS_SELL, s.UPSELL}
    for task, want in ((s.CROSS_SELL, 3), (s.UPSELL, 2)):
        result = got[task]
        assert not result.fallback
        assert 0 < len(result.items) <= want
        ids = [item.product_id for item in result.items]
        assert not set(ids) & {*cart, anchor}
        assert all(item.reason for item in result.items)
    assert any("P-unknown" in w for w in got[s.CROSS_SELL].warnings)


def _variant(model: XsellModel, in_stock: np.ndarray, **config: object) -> XsellModel:
    snap = model.snapshot
    return XsellModel(
        snapshot=dataclasses.replace(
            snap,
            config=snap.config.model_copy(update=config),
            products=dataclasses.replace(snap.products, in_stock=in_stock),
        ),
        boosters=model.boosters,
        policies=model.policies,
        meta=model.meta,
    )


def test_recommend_one_falls_back_when_no_candidate_survives(model: XsellModel) -> None:
    """One candidate per query, and that candidate sold out: a known customer gets the
    segment's popular products instead, flagged, obeying every cross-sell rule."""
    snap = model.snapshot
    customer = str(snap.customer_ids[0])
    cart = [str(snap.product_ids[int(p)]) for p in snap.top.global_top[:2]]
    one = _variant(model, snap.products.in_stock.copy(), cross_sell_candidates=1)
    batch = one.request_batch(
        task=s.CROSS_SELL, customer_id=customer, placement="cart", product_id=None, cart=cart
    )
    (only,) = collect_candidates(batch, one.snapshot).product.tolist()
    in_stock = snap.products.in_stock.copy()
    in_stock[only] = False
    sold_out = _variant(model, in_stock, cross_sell_candidates=1)
    k = 5
    got = sold_out.recommend_one(
        customer_id=customer, placement="cart", product_id=None, cart=cart, k={s.CROSS_SELL: k}
    )[s.CROSS_SELL]
    assert got.fallback is True
    assert 0 < len(got.items) <= k
    ids = [item.product_id for item in got.items]
    positions = np.asarray([snap.product_index[p] for p in ids], dtype=np.int64)
    assert all(item.reason == POPULAR_REASON for item in got.items)
    assert not set(ids) & set(cart)
    assert only not in positions.tolist()
    task = get_task(s.CROSS_SELL)
    rules = (*task.eligibility, *task.guardrails)
    assert all_of(
        rules, batch, sold_out.snapshot, np.zeros(len(positions), np.int64), positions
    ).all()
    popular = sold_out.popular_fallback(0, set(batch.context.tolist()), snap.n_products)
    assert positions.tolist() == [p for p in popular if p in set(positions.tolist())]
    # the unmodified model serves the same customer and cart without falling back
    normal = model.recommend_one(
        customer_id=customer, placement="cart", product_id=None, cart=cart, k={s.CROSS_SELL: k}
    )[s.CROSS_SELL]
    assert normal.fallback is False
    assert normal.items and all(item.reason != POPULAR_REASON for item in normal.items)


def test_the_fallback_obeys_the_price_cap(model: XsellModel) -> None:
    """A price cap nothing passes: no candidate and no popular product is shown."""
    snap = model.snapshot
    capped = _variant(model, snap.products.in_stock.copy(), cross_sell_price_cap=1e-9)
    cart = [str(snap.product_ids[int(p)]) for p in snap.top.global_top[:2]]
    got = capped.recommend_one(
        customer_id=str(snap.customer_ids[0]),
        placement="cart",
        product_id=None,
        cart=cart,
        k={s.CROSS_SELL: 5},
    )[s.CROSS_SELL]
    assert got.items == []
    assert got.fallback is False

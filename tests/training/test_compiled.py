"""Compiled rankers (``XsellModel.compile_rankers``, lleaves): the same scores and the same
recommendations as LightGBM, bit for bit, on the shared model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.compiled import CompileError, compile_ranker, probe_matrix
from features.recommend import RANKER
from training.model import XsellModel


@pytest.fixture(scope="module")
def compiled(model: XsellModel, tmp_path_factory: pytest.TempPathFactory) -> XsellModel:
    """The shared model with its rankers compiled (a copy: the shared one stays on LightGBM)."""
    twin = dataclasses.replace(model, compiled={})
    twin.compile_rankers(cache_dir=tmp_path_factory.mktemp("forests"))
    return twin


def test_every_served_ranker_is_compiled(model: XsellModel, compiled: XsellModel) -> None:
    served = sorted(t for t in model.boosters if model.policy(t) == RANKER)
    assert served and sorted(compiled.compiled) == served
    assert not model.compiled


def test_compiled_scores_equal_lightgbm_on_the_probe(compiled: XsellModel) -> None:
    for task, ranker in compiled.compiled.items():
        X = probe_matrix(ranker.booster, rows=500, seed=1)
        assert np.isnan(X).any()
        np.testing.assert_array_equal(
            compiled.ranker_score(X, task),
            np.asarray(compiled.boosters[task].predict(X, num_threads=1)),
        )


def test_compiled_recommendations_are_identical(
    model: XsellModel, compiled: XsellModel, queries: pd.DataFrame
) -> None:
    pd.testing.assert_frame_equal(compiled.recommend(queries), model.recommend(queries))
    for row in queries.itertuples():
        kwargs = {
            "customer_id": row.customer_id,
            "placement": row.placement,
            "product_id": row.anchor_product_id,
            "cart": list(row.cart_product_ids),
            "k": {t: 3 for t in model.boosters},
        }
        assert compiled.recommend_one(**kwargs) == model.recommend_one(**kwargs)


def test_the_cache_is_reused(model: XsellModel, tmp_path: Path) -> None:
    booster = next(iter(model.boosters.values()))
    compile_ranker(booster, cache_dir=tmp_path)
    cached = sorted(tmp_path.glob("forest-*.o"))
    assert len(cached) == 1
    again = compile_ranker(booster, cache_dir=tmp_path)
    X = probe_matrix(booster, rows=200)
    np.testing.assert_array_equal(again.predict(X), booster.predict(X, num_threads=1))
    assert sorted(tmp_path.glob("forest-*.o")) == cached


def test_a_ranker_replaced_after_compiling_is_scored_by_lightgbm(compiled: XsellModel) -> None:
    task = next(iter(compiled.compiled))
    booster = compiled.boosters[task]
    other = dataclasses.replace(compiled, boosters={**compiled.boosters, task: booster.__copy__()})
    X = probe_matrix(booster, rows=50)
    np.testing.assert_array_equal(other.ranker_score(X, task), booster.predict(X, num_threads=1))


def test_a_missing_lleaves_is_a_compile_error(
    model: XsellModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "lleaves", None)
    with pytest.raises(CompileError, match="not installed"):
        compile_ranker(next(iter(model.boosters.values())))
    twin = dataclasses.replace(model, compiled={})
    assert twin.compile_rankers() == []

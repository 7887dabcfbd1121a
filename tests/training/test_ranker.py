"""Ranking mechanics and determinism (``training/ranker.py``), on the shared run's fit sets."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401
from trained_model import (
    FAST,
    Trained,
)

from features.data import schema as s
from training.ranker import fit_ranker, query_groups, trainable_rows

# ------------------------------------------------------------------------------------------
# 2. Ranking mechanics
# ------------------------------------------------------------------------------------------


def test_query_groups_of_contiguous_ids() -> None:
    ids = np.array(["a", "a", "b", "c", "c", "c"], dtype=object)
    assert query_groups(ids).tolist() == [2, 1, 3]
    assert query_groups(np.array([7, 7, 3])).tolist() == [2, 1]
    assert query_groups(np.array([], dtype=object)).tolist() == []


def test_query_groups_rejects_non_contiguous_ids() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        query_groups(np.array(["a", "b", "a"], dtype=object))


def test_trainable_rows_drop_all_negative_and_all_positive_queries() -> None:
    ids = np.array(["neg", "neg", "mix", "mix", "mix", "pos", "pos", "one", "ok", "ok"])
    label = np.array([0, 0, 1, 0, 0, 1, 1, 1, 0, 1])
    keep = trainable_rows(ids, label)
    assert keep.dtype == bool
    assert keep.tolist() == [False, False, True, True, True, False, False, False, True, True]
    assert trainable_rows(np.array([], dtype=object), np.array([], dtype=int)).tolist() == []


def test_fit_ranker_raises_without_a_trainable_query(trained: Trained) -> None:
    call = trained.fits[s.UPSELL]
    no_positive = call.fit.select_queries(call.fit.queries["n_positives"].to_numpy() == 0)
    with pytest.raises(ValueError, match="no query has both"):
        fit_ranker(no_positive, call.valid, **call.kwargs)


# ------------------------------------------------------------------------------------------
# 3. Determinism
# ------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_predictions(trained: Trained) -> None:
    """Two fits with bagging and feature sampling on (a slice of) the cross-sell sets agree."""
    call = trained.fits[s.CROSS_SELL]
    fit = call.fit.select_queries(np.arange(len(call.fit.queries)) < 400)
    valid = call.valid.select_queries(np.arange(len(call.valid.queries)) < 200)
    kwargs = {**call.kwargs, "config": FAST.ranker.model_copy(update={"max_rounds": 15})}
    assert kwargs["config"].bagging_fraction < 1
    assert kwargs["config"].feature_fraction < 1
    first = fit_ranker(fit, valid, **kwargs)
    second = fit_ranker(fit, valid, **kwargs)
    assert first.num_trees() > 0
    np.testing.assert_array_equal(first.predict(fit.X), second.predict(fit.X))
    np.testing.assert_array_equal(first.predict(valid.X), second.predict(valid.X))


def test_refit_reproduces_the_trained_booster(trained: Trained) -> None:
    call = trained.fits[s.UPSELL]
    assert call.kwargs["seed"] == FAST.seed
    again = fit_ranker(call.fit, call.valid, **call.kwargs)
    assert again.best_iteration == call.booster.best_iteration
    np.testing.assert_array_equal(again.predict(call.valid.X), call.booster.predict(call.valid.X))

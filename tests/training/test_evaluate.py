"""Evaluation against the baselines (``training/evaluate.py``) in the shared run."""

from __future__ import annotations

import pytest
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401
from trained_model import (
    Trained,
)

from features.data import schema as s
from features.tasks import get_task, task_names
from training.evaluate import KS

RANKING_METRICS = (
    *(f"{name}_at_{k}" for name in ("ndcg", "map", "recall", "hit_rate") for k in KS),
    "mrr",
)


# ------------------------------------------------------------------------------------------
# 7. Baselines
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", task_names())
def test_every_baseline_is_evaluated_with_metrics_in_unit_range(
    trained: Trained, task: str
) -> None:
    ev = trained.result.evaluations[task]
    fit = trained.fits[task].fit
    names = {b.name for b in get_task(task).all_baselines()}
    assert {f"source_{src}" for src in fit.sources} <= names
    expected = {
        s.CROSS_SELL: {"popular", "segment_popular", "cooc_lift", "cooc_conf"},
        s.UPSELL: {"popular", "segment_popular", "popular_pricier"},
        s.REPLENISH: {"personal_frequency", "frequency_recency"},
    }
    assert expected[task] <= names
    assert any(n.startswith("source_") for n in names)
    assert ev.best_baseline in names
    for name in names:
        for metric in RANKING_METRICS:
            value = ev.metrics[f"baseline_{name}.{metric}"]
            assert 0.0 <= value <= 1.0, (name, metric, value)
    for metric in (*RANKING_METRICS, "candidate_recall"):
        assert 0.0 <= ev.metrics[metric] <= 1.0, metric
    assert ev.metrics["n_queries"] > 0
    assert not any("@" in key for key in ev.metrics)
    assert 0.0 <= ev.candidate_recall["merged"] <= 1.0

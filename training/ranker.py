"""Ranking mechanics written once: query groups, dropping degenerate queries, fitting."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np

from features.arrays import group_starts
from features.pipeline import TaskSet
from training.config import RankerConfig

log = logging.getLogger(__name__)


def query_groups(query_id: np.ndarray) -> np.ndarray:
    """Group sizes of rows already grouped by query (contiguous runs of equal ids).

    Raises:
        ValueError: A query's rows are not contiguous.
    """
    starts = group_starts(query_id)
    sizes = np.diff(np.append(starts, len(query_id)))
    if len(set(query_id[starts].tolist())) != len(starts):
        raise ValueError("rows of a query must be contiguous")
    return sizes


def trainable_rows(query_id: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Rows of queries that have both a positive and a negative candidate.

    Queries with no positive (or only positives) teach a ranker nothing; they are dropped from
    fitting but still count as misses in evaluation.
    """
    starts = group_starts(query_id)
    sizes = np.diff(np.append(starts, len(query_id)))
    pos = np.add.reduceat(label.astype(np.int64), starts) if len(starts) else np.zeros(0)
    ok = (pos > 0) & (pos < sizes)
    return np.repeat(ok, sizes)


def _dataset(ts: TaskSet, categorical: list[str], reference: lgb.Dataset | None) -> lgb.Dataset:
    keep = trainable_rows(ts.query_id, ts.label)
    if not keep.any():
        raise ValueError(f"{ts.task}: no query has both a positive and a negative candidate")
    return lgb.Dataset(
        ts.X[keep],
        label=ts.label[keep],
        group=query_groups(ts.query_id[keep]),
        feature_name=ts.columns,
        categorical_feature=[c for c in categorical if c in ts.columns],
        reference=reference,
        free_raw_data=True,
    )


def ranker_params(config: RankerConfig, seed: int) -> dict[str, Any]:
    """LightGBM parameters of a lambdarank ranker (either engine), early-stopped on NDCG@10."""
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "bagging_fraction": config.bagging_fraction,
        "bagging_freq": config.bagging_freq,
        "lambda_l2": config.lambda_l2,
        "lambdarank_truncation_level": config.lambdarank_truncation_level,
        "num_threads": config.num_threads,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,  # measured: same trees as row-wise, 1.6-4.5x faster here
        "verbosity": -1,
    }


def fit_ranker(
    fit: TaskSet,
    valid: TaskSet,
    *,
    categorical: list[str],
    config: RankerConfig,
    seed: int,
    callbacks: Sequence[Callable[..., None]] = (),
) -> lgb.Booster:
    """Fit a LightGBM lambdarank ranker, early-stopped on the validation window's NDCG@10.

    ``callbacks`` are extra LightGBM callbacks (called once per boosting round), e.g. a
    progress bar.
    """
    train_set = _dataset(fit, categorical, None)
    valid_set = _dataset(valid, categorical, train_set)
    booster = lgb.train(
        ranker_params(config, seed),
        train_set,
        num_boost_round=config.max_rounds,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[
            lgb.early_stopping(config.early_stopping_rounds, verbose=False),
            *callbacks,
        ],
    )
    log.info("%s: best iteration %d", fit.task, booster.best_iteration)
    return booster

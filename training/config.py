"""Typed, frozen training configuration loaded from YAML (every field has a default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import joblib
import yaml
from pydantic import BaseModel, ConfigDict, Field

from features.config import FeatureConfig
from features.data.io import Shop

PARALLEL_MIN_LINES = 200_000


class RankerConfig(BaseModel):
    """LightGBM lambdarank hyperparameters (one ranker per task uses the same settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_data_in_leaf: int = Field(40, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    bagging_freq: int = Field(1, ge=0)
    lambda_l2: float = Field(1.0, ge=0)
    max_rounds: int = Field(400, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    lambdarank_truncation_level: int = Field(20, ge=1)
    num_threads: int = Field(2, ge=1)


class SplitConfig(BaseModel):
    """Time windows of the split. ``train_until`` defaults to the last ``test_days`` of data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train_days: int = Field(98, ge=7)
    validation_days: int = Field(28, ge=1)
    test_days: int = Field(28, ge=1)
    step_days: int = Field(14, ge=1)
    max_queries_per_cutoff: int | None = Field(4000, ge=1)
    # holdout queries per task a training run evaluates on (a seeded sample, the same for the
    # new model and the champion; None: all). Evaluation cost and memory otherwise grow with
    # the shop: 1M customers have millions of holdout queries.
    max_holdout_queries: int | None = Field(10_000, ge=1)


class DaskConfig(BaseModel):
    """The Dask engine (``engine: dask``): where the cluster is and how the work is cut."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # scheduler address (tcp://host:8786); None: a LocalCluster of `workers` processes
    scheduler: str | None = None
    workers: int = Field(2, ge=1)
    # customer buckets: Parquet partitions of the purchases and parts per task and cut-off
    # (0: two per worker)
    buckets: int = Field(0, ge=0)
    # share of the parts the single-machine run that picks the number of trees is fitted on
    tree_sample: float = Field(0.25, gt=0, le=1)
    # where the partitioned Parquet goes (None: a temporary folder; on a real cluster, storage
    # every worker can read)
    work_dir: str | None = None

    @property
    def n_buckets(self) -> int:
        """Customer buckets (``buckets``, or two per worker)."""
        return self.buckets or 2 * self.workers


class TrainConfig(BaseModel):
    """Everything ``xsell train`` needs; ``xsell train --config FILE`` overrides any field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 7
    features: FeatureConfig = FeatureConfig()
    ranker: RankerConfig = RankerConfig()
    split: SplitConfig = SplitConfig()
    primary_metric: str = "ndcg_at_10"
    promotion_margin: float = Field(0.02, ge=0)
    model_name: str = "xsell-ranker"
    # processes building the training cut-offs (one snapshot each); 0: one per CPU on a shop of
    # at least PARALLEL_MIN_LINES order lines, else 1 (starting workers costs seconds)
    workers: int = Field(0, ge=0)
    # "local": NumPy/pandas and LightGBM in this process (and `workers`); "dask": snapshot
    # basket counts, training sets and rankers on a Dask cluster (see `dask`)
    engine: Literal["local", "dask"] = "local"
    dask: DaskConfig = DaskConfig()

    def workers_for(self, shop: Shop, n_cutoffs: int) -> int:
        """Processes for a build of ``n_cutoffs`` cut-offs on ``shop`` (never more than them)."""
        if self.workers:
            wanted = self.workers
        elif len(shop.purchases) >= PARALLEL_MIN_LINES:
            wanted = joblib.cpu_count()
        else:
            wanted = 1
        return max(1, min(wanted, n_cutoffs))

    @classmethod
    def from_yaml(cls, path: str | Path | None) -> TrainConfig:
        """Load a YAML file (None: defaults). Unknown keys are an error."""
        if path is None:
            return cls()
        try:
            data: Any = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"{path}: not valid YAML{where}: {problem}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a mapping")
        return cls.model_validate(data)

    def to_yaml(self) -> str:
        """The resolved configuration as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

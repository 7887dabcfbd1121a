"""Traffic splits: which variant serves a customer.

An experiment file (YAML or JSON) names the variants and their share of traffic::

    name: weak-vs-champion          # also the default hash salt
    variants:
      - name: champion
        weight: 90                  # shares are weights (need not sum to 100)
      - name: challenger
        model: models:/xsell-ranker@challenger   # a model folder or MLflow URI
        weight: 10
      - name: popular
        weight: 0                   # declared, gets no traffic
        policies: {cross_sell: "baseline:popular"}   # served policies overridden per task

A variant without ``model`` serves the service's own model (``xsell serve --model``). A customer
is assigned by a stable hash of the salt and the customer id (BLAKE2b), so they see one variant
on every request, on every worker and after a restart; changing the weights moves only the
customers whose hash crosses a boundary.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_VARIANT = "champion"
_HASH_SPACE = float(2**64)


class ExperimentConfigError(ValueError):
    """An experiment file is missing, unreadable or invalid (the message names the field)."""


class Variant(BaseModel):
    """One arm of the split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    model: str | None = Field(None, description="Model folder or MLflow URI; None: the default.")
    weight: float = Field(1.0, ge=0)
    policies: dict[str, str] = Field(
        default_factory=dict, description="Task -> served policy override ('baseline:<name>')."
    )


class Experiment(BaseModel):
    """A named traffic split between variants."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    salt: str | None = None
    variants: Annotated[list[Variant], Field(min_length=1)]

    @model_validator(mode="after")
    def _valid_split(self) -> Experiment:
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique: {dupes}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("at least one variant needs a positive weight")
        return self

    @property
    def control(self) -> str:
        """The variant others are compared with: ``champion`` if declared, else the first."""
        names = [v.name for v in self.variants]
        return DEFAULT_VARIANT if DEFAULT_VARIANT in names else names[0]

    def bucket(self, customer_id: str) -> float:
        """The customer's stable position in [0, 1)."""
        key = f"{self.salt or self.name}:{customer_id}".encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "big") / _HASH_SPACE

    def assign(self, customer_id: str) -> Variant:
        """The variant serving ``customer_id``."""
        total = sum(v.weight for v in self.variants)
        at = self.bucket(customer_id) * total
        edge = 0.0
        live = [v for v in self.variants if v.weight > 0]
        for variant in live:
            edge += variant.weight
            if at < edge:
                return variant
        return live[-1]


def single_variant() -> Experiment:
    """No experiment: every customer gets the one model (variant ``champion``)."""
    return Experiment(variants=[Variant(name=DEFAULT_VARIANT)])


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment file.

    Raises:
        ExperimentConfigError: Missing file, bad YAML, or an invalid field (named).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ExperimentConfigError(f"cannot read experiment file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ExperimentConfigError(f"experiment file {path} is not valid YAML: {exc}") from exc
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise ExperimentConfigError(f"experiment file {path}: {where}: {first['msg']}") from exc

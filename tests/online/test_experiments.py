"""Traffic splits: stable, proportional to the weights, and clear about a bad file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from online.experiments import (
    Experiment,
    ExperimentConfigError,
    Variant,
    load_experiment,
    single_variant,
)

CUSTOMERS = [f"C{i:06d}" for i in range(20_000)]


def _split(**weights: float) -> Experiment:
    return Experiment(name="t", variants=[Variant(name=n, weight=w) for n, w in weights.items()])


def test_a_customer_always_gets_the_same_variant() -> None:
    split = _split(champion=90, challenger=10)
    first = [split.assign(c).name for c in CUSTOMERS[:2000]]
    # a fresh object (another worker, a restart) assigns identically
    again = [_split(champion=90, challenger=10).assign(c).name for c in CUSTOMERS[:2000]]
    assert first == again


def test_shares_follow_the_weights() -> None:
    counts = Counter(_split(champion=90, challenger=10).assign(c).name for c in CUSTOMERS)
    share = counts["challenger"] / len(CUSTOMERS)
    # binomial sd at n=20,000, p=0.1 is 0.0021: 0.01 is more than 4 sd
    assert abs(share - 0.10) < 0.01


def test_changing_weights_moves_only_customers_across_the_boundary() -> None:
    before = _split(champion=90, challenger=10)
    after = _split(champion=80, challenger=20)
    moved = [c for c in CUSTOMERS if before.assign(c).name != after.assign(c).name]
    assert all(before.assign(c).name == "champion" for c in moved)
    assert abs(len(moved) / len(CUSTOMERS) - 0.10) < 0.01


def test_the_salt_reshuffles() -> None:
    a = _split(champion=50, challenger=50)
    b = Experiment(name="t", salt="other", variants=a.variants)
    same = sum(a.assign(c).name == b.assign(c).name for c in CUSTOMERS[:4000])
    assert 0.45 < same / 4000 < 0.55


def test_zero_weight_gets_no_traffic_and_control_defaults() -> None:
    split = _split(challenger=1, champion=1, popular=0)
    assert {split.assign(c).name for c in CUSTOMERS[:3000]} == {"champion", "challenger"}
    assert split.control == "champion"
    assert _split(a=1, b=1).control == "a"
    assert single_variant().assign("anyone").name == "champion"


def test_a_bad_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\nvariants:\n  - name: a\n    weight: -1\n")
    with pytest.raises(ExperimentConfigError, match=r"variants\.0\.weight"):
        load_experiment(path)
    path.write_text("name: x\nvariants:\n  - name: a\n  - name: a\n")
    with pytest.raises(ExperimentConfigError, match="unique"):
        load_experiment(path)
    path.write_text("variants: [\n")
    with pytest.raises(ExperimentConfigError, match="not valid YAML"):
        load_experiment(path)
    with pytest.raises(ExperimentConfigError, match="cannot read"):
        load_experiment(tmp_path / "missing.yaml")


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: weak-vs-champion\nvariants:\n"
        "  - {name: champion, weight: 50}\n"
        "  - {name: weak, weight: 50, policies: {cross_sell: 'baseline:popular'}}\n"
    )
    split = load_experiment(path)
    assert [v.name for v in split.variants] == ["champion", "weak"]
    assert split.variants[1].policies == {"cross_sell": "baseline:popular"}

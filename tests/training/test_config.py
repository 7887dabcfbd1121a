"""The training configuration (``training/config.py``): YAML loading and validation, the shipped
configs, and a configured popularity window carried through snapshot, features and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.columns import popularity_column
from features.config import FeatureConfig
from features.data import schema as s
from features.data.io import load_shop
from features.matrix import feature_columns
from features.pipeline import TaskSet
from features.recommend import BASELINE_PREFIX, XsellModel
from features.snapshot import FeatureSnapshot, build_snapshot
from features.tasks import get_task, task_names
from training.config import RankerConfig, SplitConfig, TrainConfig
from training.evaluate import evaluate_model, holdout_sets

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------
# from_yaml
# ------------------------------------------------------------------------------------------


def test_nested_overrides_load_and_the_rest_keeps_its_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "seed: 11\n"
        "promotion_margin: 0.05\n"
        "ranker:\n  max_rounds: 9\n  num_leaves: 7\n"
        "split:\n  test_days: 10\n  max_queries_per_cutoff: null\n"
        "features:\n  popularity_windows_days: [7, 30, 60]\n  cross_sell_price_cap: 2.5\n",
    )
    cfg = TrainConfig.from_yaml(path)
    assert cfg.seed == 11
    assert cfg.promotion_margin == 0.05
    assert cfg.ranker == RankerConfig(max_rounds=9, num_leaves=7)
    assert cfg.split == SplitConfig(test_days=10, max_queries_per_cutoff=None)
    assert cfg.features.popularity_windows_days == (7, 30, 60)
    assert cfg.features.cross_sell_price_cap == 2.5
    assert cfg.features.session_gap_minutes == FeatureConfig().session_gap_minutes
    assert cfg.model_name == TrainConfig().model_name
    assert TrainConfig.from_yaml(str(path)) == cfg  # a str path works too


def test_no_file_and_an_empty_file_give_the_defaults(tmp_path: Path) -> None:
    assert TrainConfig.from_yaml(None) == TrainConfig()
    assert TrainConfig.from_yaml(_write(tmp_path, "")) == TrainConfig()
    assert TrainConfig.from_yaml(_write(tmp_path, "# only a comment\n", "c.yaml")) == TrainConfig()


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    cfg = TrainConfig(
        seed=3,
        features=FeatureConfig(popularity_windows_days=(14, 45), segment_column="segment"),
        split=SplitConfig(train_days=30, max_queries_per_cutoff=None),
    )
    assert TrainConfig.from_yaml(_write(tmp_path, cfg.to_yaml())) == cfg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("max_round: 5\n", "max_round", id="top-level"),
        pytest.param("ranker:\n  max_round: 5\n", "max_round", id="ranker"),
        pytest.param("split:\n  test_day: 5\n", "test_day", id="split"),
        pytest.param("features:\n  popularity_window_days: [7]\n", "popularity_window", id="f"),
    ],
)
def test_unknown_keys_are_refused_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ValidationError, match=key) as info:
        TrainConfig.from_yaml(_write(tmp_path, text))
    assert isinstance(info.value, ValueError)  # what the CLI turns into one "error:" line
    assert "extra" in str(info.value).lower()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("ranker:\n  max_rounds: 0\n", "max_rounds", id="below-minimum"),
        pytest.param("ranker:\n  max_rounds: many\n", "max_rounds", id="not-a-number"),
        pytest.param("ranker: 5\n", "ranker", id="section-not-a-mapping"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        TrainConfig.from_yaml(_write(tmp_path, text))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("- seed\n- 3\n", id="list"),
        pytest.param("42\n", id="scalar"),
        pytest.param("just some words\n", id="string"),
    ],
)
def test_a_non_mapping_file_is_refused(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match="must be a mapping") as info:
        TrainConfig.from_yaml(path)
    assert str(path) in str(info.value)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TrainConfig.from_yaml(tmp_path / "nope.yaml")


def test_the_shipped_completejourney_config_loads() -> None:
    cfg = TrainConfig.from_yaml(CONFIGS / "completejourney.yaml")
    assert cfg.model_name == "xsell-ranker-completejourney"
    assert cfg.model_name != TrainConfig().model_name  # never compared with the synthetic shop
    assert cfg.split.train_days == 98
    assert cfg.split.max_queries_per_cutoff == 4000


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    assert isinstance(TrainConfig.from_yaml(path), TrainConfig)


# ------------------------------------------------------------------------------------------
# A configured popularity window, end to end
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("windows", [(7, 30, 60), (10, 45)])
def test_any_popularity_window_works_end_to_end(
    small_shop_dir: Path, windows: tuple[int, ...]
) -> None:
    """Snapshot, feature columns, the popularity baselines and an evaluation on a window set
    other than the default (7, 30, 90): the longest window used to be hard-wired."""
    config = FeatureConfig(popularity_windows_days=windows)
    shop = load_shop(small_shop_dir)
    _, last = shop.time_range()
    as_of = (last - pd.Timedelta(days=28)).normalize()
    snap = build_snapshot(shop, as_of=as_of, config=config)
    assert set(snap.products.popularity) == set(windows)

    long = popularity_column(max(windows))
    assert long == f"prod_pop_{max(windows)}"
    for task in task_names():
        columns = feature_columns(snap, task)
        assert {popularity_column(w) for w in windows} <= set(columns), task
        assert popularity_column(90) not in columns

    # every task served by a baseline: no ranker needed, all the scoring goes through columns
    policies = {
        s.CROSS_SELL: f"{BASELINE_PREFIX}popular",
        s.UPSELL: f"{BASELINE_PREFIX}popular",
        s.REPLENISH: f"{BASELINE_PREFIX}personal_frequency",
    }
    for task, policy in policies.items():
        assert get_task(task).baseline(policy.removeprefix(BASELINE_PREFIX)) is not None
    model = XsellModel(snapshot=snap, boosters={}, policies=policies)
    sets = holdout_sets(model, shop, start=as_of, end=last + pd.Timedelta(seconds=1), seed=0)
    assert set(sets) == set(task_names())
    for task, ts in sets.items():
        assert ts.columns == feature_columns(snap, task)
        values = ts.X[:, ts.columns.index(long)]
        assert np.isfinite(values).all() and (values > 0).any(), task
    evals = evaluate_model(model, sets)
    assert set(evals) == set(task_names())
    for task, ev in evals.items():
        assert not ev.has_ranker
        assert ev.metrics["n_queries"] > 0, task
        names = {b.name for b in get_task(task).all_baselines()}
        assert ev.best_baseline in names
        for name in names:
            assert 0.0 <= ev.metrics[f"baseline_{name}.ndcg_at_10"] <= 1.0, (task, name)


def test_holdout_sample_is_capped_and_the_same_for_every_model(small_shop_dir: Path) -> None:
    """``split.max_holdout_queries``: at most that many holdout queries per task, drawn with the
    run's seed, so the new model and the champion are scored on the same queries."""
    shop = load_shop(small_shop_dir)
    _, last = shop.time_range()
    as_of = (last - pd.Timedelta(days=28)).normalize()
    snap = build_snapshot(shop, as_of=as_of, config=FeatureConfig())
    policies = {task: f"{BASELINE_PREFIX}popular" for task in (s.CROSS_SELL, s.UPSELL)}
    model = XsellModel(snapshot=snap, boosters={}, policies=policies)
    window = {"start": as_of, "end": last + pd.Timedelta(seconds=1), "seed": 3}
    full = holdout_sets(model, shop, **window)
    cap = 7
    first = holdout_sets(model, shop, **window, max_queries=cap)
    again = holdout_sets(model, shop, **window, max_queries=cap)
    assert set(first) == set(full)
    for task, ts in first.items():
        assert len(full[task].queries) > cap, task  # the cap binds on this shop
        ids = ts.queries["query_id"].tolist()
        assert len(ids) == cap, task
        assert ids == again[task].queries["query_id"].tolist(), task
        assert set(ids) <= set(full[task].queries["query_id"]), task
    assert TrainConfig().split.max_holdout_queries == 10_000


def test_holdout_built_with_the_training_sets_is_the_models_holdout(small_shop_dir: Path) -> None:
    """The holdout window the local engine builds in the same pool as the fit and validation
    cut-offs (two worker processes) gives exactly the sets ``holdout_sets`` builds against the
    serving snapshot at ``train_until``: the same queries, candidates, features and labels."""
    from training.engines import LocalEngine, Window
    from training.progress import Progress

    shop = load_shop(small_shop_dir)
    _, last = shop.time_range()
    until = (last - pd.Timedelta(days=28)).normalize()
    end = last + pd.Timedelta(seconds=1)
    cfg = TrainConfig(workers=2, split=SplitConfig(max_holdout_queries=60))
    windows = [
        Window("fit", until - pd.Timedelta(days=28), until),
        Window("holdout", until, end, holdout=True),
    ]
    engine = LocalEngine()
    built = engine.task_sets(
        shop, tasks=task_names(), config=cfg, windows=windows, say=Progress.of(None)
    )
    # the holdout's snapshot came back from its worker: the serving snapshot is not built again
    assert len(engine.kept) == 1
    kept = engine.snapshot(shop, as_of=until, config=cfg)
    assert not engine.kept and engine.snapshot(shop, as_of=until, config=cfg) is not kept
    fresh = LocalEngine().snapshot(shop, as_of=until, config=cfg)
    policies = {task: f"{BASELINE_PREFIX}popular" for task in task_names()}

    def sets_against(snap: FeatureSnapshot) -> dict[str, TaskSet]:
        model = XsellModel(snapshot=snap, boosters={}, policies=policies)
        return holdout_sets(model, shop, start=until, end=end, seed=cfg.seed, max_queries=60)

    want, from_kept = sets_against(fresh), sets_against(kept)
    got = {task: sets["holdout"] for task, sets in built.items() if "holdout" in sets}
    assert set(got) == set(want) == set(from_kept) and want
    for task, ts in want.items():
        np.testing.assert_array_equal(ts.X, from_kept[task].X)
        pd.testing.assert_frame_equal(ts.queries, from_kept[task].queries)
        assert 0 < len(ts.queries) <= 60, task
        other = got[task]
        np.testing.assert_array_equal(ts.X, other.X)
        np.testing.assert_array_equal(ts.query_id, other.query_id)
        np.testing.assert_array_equal(ts.product_id, other.product_id)
        np.testing.assert_array_equal(ts.label, other.label)
        pd.testing.assert_frame_equal(ts.queries, other.queries)
        assert "fit" in built[task], task
    assert max(len(ts.queries) for ts in want.values()) == 60  # the cap binds


@pytest.mark.parametrize("workers", [1, 2])
def test_a_kept_snapshot_stands_for_its_cut_off(
    small_shop_dir: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot given to ``LocalEngine.keep`` (the merge calibration's, built before the
    merge weights were learned) is used for the step at its cut-off with the run's weights, in
    one process or sent to a worker: the sets equal those of an engine that builds it, and it
    is not built again."""
    import features.pipeline as pipeline
    from training.engines import LocalEngine, Window
    from training.progress import Progress

    shop = load_shop(small_shop_dir)
    _, last = shop.time_range()
    until = (last - pd.Timedelta(days=28)).normalize()
    start = until - pd.Timedelta(days=28)
    weights = {"cooc": (2.0, 1.0), "segment_popular": (3.0, 0.5)}
    cfg = TrainConfig(workers=workers, features=FeatureConfig(merge_weights=weights))
    windows = [
        Window("fit", start, until),
        Window("validation", until, until + pd.Timedelta(days=14)),
    ]
    want = LocalEngine().task_sets(
        shop, tasks=task_names(), config=cfg, windows=windows, say=Progress.of(None)
    )
    engine = LocalEngine()
    engine.keep(build_snapshot(shop, as_of=start, config=FeatureConfig()), start)  # no weights
    calls: list[pd.Timestamp] = []
    real = pipeline.build_snapshot
    monkeypatch.setattr(
        pipeline,
        "build_snapshot",
        lambda shop, as_of, config: calls.append(as_of) or real(shop, as_of=as_of, config=config),
    )
    got = engine.task_sets(
        shop, tasks=task_names(), config=cfg, windows=windows, say=Progress.of(None)
    )
    assert not engine.kept  # handed out
    if workers == 1:  # the builds in this process are seen: every cut-off but the kept one
        assert start not in calls and len(calls) == 2, calls
    assert set(got) == set(want) and want
    for task, sets in want.items():
        for name, ts in sets.items():
            other = got[task][name]
            np.testing.assert_array_equal(ts.X, other.X)
            np.testing.assert_array_equal(ts.product_id, other.product_id)
            np.testing.assert_array_equal(ts.label, other.label)

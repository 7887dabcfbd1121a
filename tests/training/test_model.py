"""The bundle (``training/model.py``): the registered boosters are the trained ones, save ->
load -> predict, damaged folders and missing URIs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow_isolation import clear_uri_env, forget_uris, no_uri_env  # noqa: F401
from trained_model import (
    EXPERIMENT,
    MODEL_NAME,
    Trained,
)

from features.data import schema as s
from features.recommend import MODEL_FORMAT_VERSION, OutdatedModelError
from features.tasks import task_names
from training.model import ModelLoadError, XsellModel, load_model
from training.tracking import Tracker


def test_registered_boosters_are_the_trained_ones(trained: Trained, model: XsellModel) -> None:
    for task, call in trained.fits.items():
        np.testing.assert_array_equal(
            model.boosters[task].predict(call.valid.X), call.booster.predict(call.valid.X)
        )
    assert model.meta["run_id"] == trained.result.run_id
    assert model.snapshot.as_of_timestamp == trained.result.split.train_until


# ------------------------------------------------------------------------------------------
# 4. Save -> load -> predict
# ------------------------------------------------------------------------------------------


def test_reload_gives_identical_scores_and_recommendations(
    model: XsellModel, model_dir: Path, trained: Trained, queries: pd.DataFrame
) -> None:
    reloaded = XsellModel.load(model_dir)
    assert sorted(reloaded.boosters) == sorted(model.boosters)
    assert reloaded.policies == model.policies
    for task, call in trained.fits.items():
        assert reloaded.columns(task) == call.fit.columns
        np.testing.assert_array_equal(
            reloaded.boosters[task].predict(call.valid.X),
            model.boosters[task].predict(call.valid.X),
        )
    pd.testing.assert_frame_equal(reloaded.recommend(queries), model.recommend(queries))
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["tasks"] == list(task_names())
    assert meta["policies"] == model.policies
    assert meta["feature_columns"][s.CROSS_SELL] == model.columns(s.CROSS_SELL)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        pytest.param(lambda d: (d / "meta.json").write_text("{not json"), "metadata", id="meta"),
        pytest.param(lambda d: (d / "meta.json").unlink(), "metadata", id="no-meta"),
        pytest.param(lambda d: (d / f"{s.UPSELL}.txt").unlink(), "upsell", id="no-booster"),
        pytest.param(
            lambda d: (d / f"{s.CROSS_SELL}.txt").write_text("garbage"),
            "cross_sell",
            id="bad-booster",
        ),
        pytest.param(
            lambda d: (d / "meta.json").write_text(json.dumps({"format_version": 99})),
            "format",
            id="format",
        ),
        pytest.param(lambda d: (d / "meta.json").write_text("[1]"), "JSON object", id="list"),
        pytest.param(
            lambda d: (d / "meta.json").write_text(
                json.dumps({"format_version": MODEL_FORMAT_VERSION})
            ),
            "no rankers or policies",
            id="no-tasks",
        ),
        pytest.param(
            lambda d: (d / "meta.json").write_text(
                json.dumps(
                    {
                        **json.loads((d / "meta.json").read_text()),
                        "policies": {s.UPSELL: "baseline:no-such-heuristic"},
                    }
                )
            ),
            "no baseline",
            id="unknown-policy",
        ),
        pytest.param(lambda d: shutil.rmtree(d / "snapshot"), "snapshot", id="no-snapshot"),
    ],
)
def test_damaged_model_folder_raises_model_load_error(
    model_dir: Path, tmp_path: Path, damage: Callable[[Path], object], match: str
) -> None:
    folder = shutil.copytree(model_dir, tmp_path / "copy")
    damage(folder)
    with pytest.raises(ModelLoadError, match=match) as raised:
        XsellModel.load(folder)
    # only the format case is "outdated" (replaced by the next training run); the rest is damage
    assert isinstance(raised.value, OutdatedModelError) == (match == "format")


def _rename_first_feature(folder: Path) -> None:
    booster = folder / f"{s.CROSS_SELL}.txt"
    lines = booster.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("feature_names="))
    names = lines[at].removeprefix("feature_names=").split(" ")
    lines[at] = "feature_names=" + " ".join(["feature_of_earlier_code", *names[1:]])
    booster.write_text("".join(lines))


def test_rankers_of_earlier_feature_code_are_outdated(model_dir: Path, tmp_path: Path) -> None:
    """A sound bundle whose ranker was trained on other feature columns cannot be served by this
    code: it is reported as outdated (the next training run replaces such a champion)."""
    folder = shutil.copytree(model_dir, tmp_path / "copy")
    _rename_first_feature(folder)
    with pytest.raises(OutdatedModelError, match="cross_sell ranker's features do not match"):
        XsellModel.load(folder)


def test_load_model_of_a_missing_folder_or_uri_raises(tmp_path: Path, trained: Trained) -> None:
    Tracker(experiment=EXPERIMENT, root=trained.root)
    with pytest.raises(ModelLoadError):
        load_model(f"models:/{MODEL_NAME}/99")
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path / "nowhere"))

"""The trained bundle in MLflow: loading a version by URI and the pyfunc wrapper.

The bundle itself (:class:`features.recommend.XsellModel`: rankers, snapshot, served policies)
and the request pipeline live in ``features/``; this module only moves folders in and out of
MLflow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from features.data.io import load_shop
from features.recommend import ModelLoadError, XsellModel, refresh_snapshot
from features.snapshot import FeatureSnapshot, build_snapshot

__all__ = [
    "ModelLoadError",
    "XsellModel",
    "XsellPyfunc",
    "export_model",
    "load_model",
    "load_serving_model",
]


def load_model(uri: str, *, dst_path: str | Path | None = None) -> XsellModel:
    """Load from a local folder or an MLflow URI (``models:/xsell-ranker@champion``, ``runs:/``).

    Args:
        uri: A model folder, or an MLflow URI.
        dst_path: Where to download MLflow artifacts (default: a new temporary folder); the
            loaded model is fully in memory, so the caller may delete it afterwards.
    """
    path = Path(uri)
    if path.is_dir():
        return XsellModel.load(path)
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri.rstrip("/"), dst_path=None if dst_path is None else str(dst_path)
        )
    except Exception as exc:  # MLflow raises several types for a bad URI
        raise ModelLoadError(f"cannot fetch model {uri}: {exc}") from exc
    candidates = [Path(local), *Path(local).rglob("meta.json")]
    for c in candidates:
        folder = c if c.is_dir() else c.parent
        if (folder / "meta.json").exists() and (folder / "snapshot").is_dir():
            return XsellModel.load(folder)
    raise ModelLoadError(f"no xsell model folder inside {uri}")


def _registered_version(uri: str) -> str:
    """``name/version`` of a ``models:/name@alias`` or ``models:/name/version`` URI."""
    from mlflow.tracking import MlflowClient

    ref = uri.removeprefix("models:/").strip("/")
    if "@" not in ref:
        return ref
    name, alias = ref.split("@", 1)
    try:
        return f"{name}/{MlflowClient().get_model_version_by_alias(name, alias).version}"
    except Exception as exc:  # MLflow raises several types for a missing model or alias
        raise ModelLoadError(f"cannot resolve {uri}: {exc}") from exc


def load_serving_model(uri: str) -> tuple[XsellModel, str]:
    """Load one model version and name it.

    Args:
        uri: A model folder, or an MLflow URI in the store of ``training.tracking``
            (``MLFLOW_TRACKING_URI`` or the repository's ``mlruns/``).

    Returns:
        The model and its version label: ``name/version`` for registry URIs, the folder's
        recorded ``model_version`` (``xsell export-model``), else ``run:<run id>``.

    Raises:
        ModelLoadError: The URI names no loadable model.
    """
    if Path(uri).is_dir():
        model = load_model(uri)
        version = model.meta.get("model_version") or f"run:{model.meta.get('run_id', 'unknown')}"
        return model, str(version)
    from training.tracking import use_store

    use_store()
    version = None
    if uri.startswith("models:/"):
        version = _registered_version(uri)  # pin the alias: load exactly that version
        uri = f"models:/{version}"
    with tempfile.TemporaryDirectory(prefix="xsell-model-") as tmp:
        model = load_model(uri, dst_path=tmp)
    return model, version or f"run:{model.meta.get('run_id', 'unknown')}"


def export_model(uri: str, out: str | Path) -> tuple[Path, str]:
    """Write the model of ``uri`` as a folder that records its version (for ``bentoml build``)."""
    model, version = load_serving_model(uri)
    model.meta["model_version"] = version
    model.meta["source_uri"] = uri
    return model.save(out), version


def _pyfunc_base() -> type:
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class XsellPyfunc(_pyfunc_base()):  # type: ignore[misc]
    """MLflow pyfunc wrapper: ``predict`` is batch scoring with ``xsell recommend``'s columns."""

    def load_context(self, context: Any) -> None:
        """Load the model folder stored as the ``model_dir`` artifact."""
        self.model = XsellModel.load(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """Score a query frame; see :meth:`XsellModel.recommend`."""
        return self.model.recommend(model_input)


def refresh_model_snapshot(
    folder: str | Path, data: str | Path, *, until: pd.Timestamp | None = None
) -> FeatureSnapshot:
    """``xsell snapshot refresh``: rebuild a model folder's snapshot from newer data, for the
    same rankers (no retraining); a service serving the folder swaps it in within seconds.

    Args:
        folder: A model folder (``xsell export-model``, or what ``xsell serve --model`` serves).
        data: The shop folder with the newer data (e.g. ``xsell events export`` output).
        until: The new cut-off (rows strictly before it); default just after the data's last row.

    Raises:
        ModelLoadError: Not a model folder, or the new data changes the feature columns.
        DataValidationError: The shop folder is invalid.
        ValueError: The new cut-off is not later than the current snapshot's.
    """
    model = XsellModel.load(folder)
    shop = load_shop(data)
    cutoff = (
        pd.Timestamp(until) if until is not None else shop.time_range()[1] + pd.Timedelta(1, "s")
    )
    if cutoff <= model.snapshot.as_of_timestamp:
        raise ValueError(
            f"the new cut-off {cutoff} is not later than the served snapshot "
            f"({model.snapshot.as_of_timestamp}); nothing to refresh"
        )
    snapshot = build_snapshot(shop, as_of=cutoff, config=model.snapshot.config)
    refresh_snapshot(folder, model, snapshot)
    return snapshot

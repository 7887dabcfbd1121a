"""The one MLflow wrapper of xsell: tracking store, runs, logging, registry, aliases, promotion.

Nothing here touches MLflow at import time. A :class:`Tracker` sets the tracking and registry
URIs explicitly when it is created: by default a SQLite database ``mlruns/mlflow.db`` in the
repository (MLflow 3 refuses a plain ``./mlruns`` file store), with run artifacts under
``mlruns/artifacts``.

Aliases (``champion``, ``challenger``) change only through explicit calls
(:meth:`Tracker.set_alias`, :meth:`Tracker.promote`); closing a run never touches them, so a
failed job never changes the champion.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from mlflow import ActiveRun
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import ModelSignature
    from mlflow.pyfunc import PythonModel
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "xsell-ranker"
CHAMPION = "champion"
CHALLENGER = "challenger"

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
MLRUNS_DIR = "mlruns"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
MODEL_ARTIFACT_KEY = "model_dir"

# The experiment tag MLflow 3's UI reads to pick an experiment's kind and its first tab: without
# it the UI infers a kind and may open the GenAI overview (traces, tokens); with
# ``custom_model_development`` it opens the training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DEFAULT_UI_URL = "http://127.0.0.1:5000"

# MLflow's own limits (mlflow.utils.validation) and name rule for params and metrics.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
_VALID_NAME = re.compile(r"^[/\w.\- :]*$")
_TRUNCATED = "...[truncated]"


# --------------------------------------------------------------------------- store location


def repo_root(start: Path | None = None) -> Path:
    """The nearest folder holding ``pyproject.toml`` from ``start`` (default: cwd) upward.

    Falls back to ``start`` itself when no ``pyproject.toml`` is found.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


def mlruns_dir(root: Path | None = None) -> Path:
    """The local store folder (created): ``root`` if given, else ``<repo root>/mlruns``."""
    folder = Path(root).resolve() if root is not None else repo_root() / MLRUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tracking_uri(root: Path | None = None) -> str:
    """The tracking URI to use.

    Precedence: an explicit ``root`` (``sqlite:///<root>/mlflow.db``), then the
    ``MLFLOW_TRACKING_URI`` environment variable, then ``sqlite:///<repo>/mlruns/mlflow.db``.
    An explicit ``root`` wins over the environment because ``mlflow.set_tracking_uri`` itself
    exports ``MLFLOW_TRACKING_URI``: reading the environment first would send a second
    ``Tracker(root=...)`` in the same process to the first one's store.

    Args:
        root: Folder of a local store (the SQLite file and ``artifacts/`` go inside it).

    Returns:
        A URI for ``mlflow.set_tracking_uri``; the local folder is created when used.
    """
    if root is None and (env := os.environ.get(TRACKING_URI_ENV)):
        return env
    return f"sqlite:///{(mlruns_dir(root) / DB_FILE).as_posix()}"


def use_store(root: Path | None = None) -> str:
    """Point MLflow's tracking and registry at the store of :func:`tracking_uri`; return it."""
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def artifact_root(root: Path | None = None) -> Path | None:
    """Where run artifacts go for the store :func:`tracking_uri` picks.

    For a SQLite store, the ``artifacts/`` folder beside the database file; ``None`` for any
    other store (a tracking server chooses its own artifact location).
    """
    uri = tracking_uri(root)
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return database.parent / ARTIFACTS_DIR


# --------------------------------------------------------------------------- promotion rule


@dataclass(frozen=True)
class MetricComparison:
    """One primary metric of a promotion decision.

    ``threshold`` is what the challenger had to exceed (``None`` when there is no champion
    figure); ``passed`` whether it did.
    """

    metric: str
    challenger: float | None
    champion: float | None
    threshold: float | None
    passed: bool


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a challenger replaces the champion, why, and the per-metric figures."""

    promote: bool
    reason: str
    comparisons: tuple[MetricComparison, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (for ``Tracker.log_dict``)."""
        return asdict(self)


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value)


def promotion_threshold(champion: float, margin: float) -> float:
    """The value a challenger must strictly exceed to beat ``champion`` by ``margin``.

    ``champion + margin * |champion|`` (a relative margin that also points the right way for
    negative metrics); when the champion is exactly 0, the margin is absolute: ``margin``.
    """
    if champion == 0:
        return margin
    return champion + margin * abs(champion)


def promotion_decision(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    *,
    primary_metrics: Sequence[str],
    margin: float = 0.0,
    ties_pass: bool = False,
) -> PromotionDecision:
    """Decide whether ``challenger`` should become champion (all metrics: higher is better).

    Promote when there is no champion (``champion is None``), or when the challenger strictly
    exceeds :func:`promotion_threshold` on **every** primary metric: with ``margin=0`` a tie is
    not a win, with ``margin=0.01`` the challenger must be more than 1 % better on each. A
    primary metric missing or non-finite on either side blocks promotion (the two must be
    measured on the same holdout).

    Args:
        challenger: The candidate's metrics, e.g. ``{"cross_sell.ndcg_at_10": 0.31}``.
        champion: The current champion's metrics on the same holdout, or ``None`` if there is
            no champion.
        primary_metrics: Names that must all improve.
        margin: Relative improvement required (>= 0).
        ties_pass: Reaching the threshold is enough ("at least as good": a tie passes).

    Returns:
        The decision, its reason and one :class:`MetricComparison` per primary metric.

    Raises:
        ValueError: If ``primary_metrics`` is empty or ``margin`` is negative or not finite.
    """
    if not primary_metrics:
        raise ValueError("primary_metrics must name at least one metric")
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")

    comparisons: list[MetricComparison] = []
    failures: list[str] = []
    for metric in primary_metrics:
        new = challenger.get(metric)
        old = None if champion is None else champion.get(metric)
        threshold = promotion_threshold(old, margin) if _finite(old) else None
        if not _finite(new):
            passed = False
            failures.append(f"challenger has no finite {metric}")
        elif champion is None:
            passed = True
        elif threshold is None:
            passed = False
            failures.append(f"champion has no finite {metric}")
        else:
            passed = new >= threshold - 1e-12 if ties_pass else new > threshold
            if not passed:
                sign = "<" if ties_pass else "<="
                failures.append(f"{metric} {new:.6g} {sign} {threshold:.6g} (champion {old:.6g})")
        comparisons.append(MetricComparison(metric, new, old, threshold, passed))

    if failures:
        return PromotionDecision(False, "not promoted: " + "; ".join(failures), tuple(comparisons))
    if champion is None:
        return PromotionDecision(True, "no champion yet", tuple(comparisons))
    sign = ">=" if ties_pass else ">"
    wins = ", ".join(f"{c.metric} {c.challenger:.6g} {sign} {c.threshold:.6g}" for c in comparisons)
    return PromotionDecision(
        True, f"beats champion (margin {margin:g}): {wins}", tuple(comparisons)
    )


# --------------------------------------------------------------------------- logging helpers


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings flattened to dotted keys, values stringified and truncated.

    ``{"lgbm": {"num_leaves": 31}}`` becomes ``{"lgbm.num_leaves": "31"}``; values longer than
    MLflow's limit (6000 characters) are cut and end with ``...[truncated]``.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = _truncate(str(value), MAX_PARAM_VALUE_LENGTH)
    return flat


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def validate_metric_name(name: str) -> None:
    """Raise ``ValueError`` if MLflow would reject ``name``.

    MLflow allows letters, digits, ``_ - . : /`` and spaces, and no path tricks (``a//b``,
    ``../a``, ``/a``). ``ndcg@10`` is rejected: use ``ndcg_at_10``.
    """
    if "@" in name:
        suggestion = name.replace("@", "_at_")
        raise ValueError(
            f"metric name {name!r} contains '@' (rejected by MLflow); use {suggestion!r}"
        )
    if not name or not _VALID_NAME.match(name):
        raise ValueError(
            f"metric name {name!r} may only contain letters, digits, spaces and '_-.:/'"
        )
    normalized = posixpath.normpath(name)
    if normalized != name or normalized == "." or normalized.startswith(("..", "/")):
        raise ValueError(f"metric name {name!r} is not a clean relative path")


# --------------------------------------------------------------------------- the tracker


class Tracker:
    """One experiment in one tracking store: a run per job, its logs, the registry and aliases.

    Example::

        tracker = Tracker(experiment="xsell")
        with tracker.start_run("train", tags={"data": "shop-a"}):
            tracker.log_params(config.model_dump())
            tracker.log_metrics({"cross_sell.ndcg_at_10": 0.31})
            uri = tracker.log_model(model, model_dir, x_example, y_example, pip_requirements=reqs)
        version = tracker.register(uri)
        tracker.set_alias(DEFAULT_MODEL_NAME, CHALLENGER, version)
    """

    def __init__(self, *, experiment: str | None, root: Path | None = None) -> None:
        """Point MLflow at the store and create (or reuse) the experiment.

        Args:
            experiment: Experiment name; None for registry-only use (no runs).
            root: Folder of a local store; default: ``MLFLOW_TRACKING_URI`` if set, else the
                repository's ``mlruns/`` (see :func:`tracking_uri`).
        """
        from mlflow.entities import LifecycleStage
        from mlflow.tracking import MlflowClient

        self.uri = use_store(root)
        self.client: MlflowClient = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment = experiment
        self._run_id: str | None = None
        self.experiment_id: str | None = None
        if experiment is None:
            return
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            artifacts = artifact_root(root)
            location = None
            if artifacts is not None:
                artifacts.mkdir(parents=True, exist_ok=True)
                location = artifacts.as_uri()
            self.experiment_id = self.client.create_experiment(
                experiment,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        else:
            if found.lifecycle_stage == LifecycleStage.DELETED:
                self.client.restore_experiment(found.experiment_id)
            self.experiment_id = found.experiment_id
            if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before this tag
                self.client.set_experiment_tag(
                    found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                )

    # ---- runs

    @contextmanager
    def start_run(
        self, run_name: str, tags: Mapping[str, Any] | None = None
    ) -> Iterator[ActiveRun]:
        """Open exactly one run; it ends FINISHED, or FAILED if the block raises.

        Aliases are never touched here.

        Raises:
            RuntimeError: If an MLflow run is already active in this process.
        """
        import mlflow

        if self.experiment_id is None:
            raise RuntimeError("this Tracker was created without an experiment: no runs")
        if (active := mlflow.active_run()) is not None:
            raise RuntimeError(f"an MLflow run is already active: {active.info.run_id}")
        str_tags = {k: _truncate(str(v), MAX_TAG_VALUE_LENGTH) for k, v in (tags or {}).items()}
        with mlflow.start_run(
            experiment_id=self.experiment_id, run_name=run_name, tags=str_tags
        ) as run:
            self._run_id = run.info.run_id
            try:
                yield run
            finally:
                self._run_id = None

    @property
    def run_id(self) -> str:
        """The id of the run open in :meth:`start_run`.

        Raises:
            RuntimeError: Outside ``start_run`` (logging never opens a run implicitly).
        """
        if self._run_id is None:
            raise RuntimeError("no open run: call inside `with tracker.start_run(...)`")
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Log params, nested mappings flattened to dotted keys (see :func:`flatten_params`).

        Returns:
            The flat params logged. MLflow params are immutable: logging a key again with
            another value in the same run raises.
        """
        import mlflow

        _ = self.run_id
        flat = flatten_params(params)
        mlflow.log_params(flat)
        return flat

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None
    ) -> dict[str, float]:
        """Log metrics, skipping NaN and infinite values (counted in the log).

        Returns:
            The metrics actually logged.

        Raises:
            ValueError: On a name MLflow rejects (such as one containing ``@``); nothing is
                logged then.
        """
        import mlflow

        _ = self.run_id
        for name in metrics:
            validate_metric_name(name)
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        if skipped := sorted(set(metrics) - set(finite)):
            log.warning("skipped %d non-finite metric(s): %s", len(skipped), ", ".join(skipped))
        if finite:
            mlflow.log_metrics(finite, step=step)
        return finite

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified, truncated to MLflow's limit)."""
        import mlflow

        _ = self.run_id
        mlflow.set_tags({k: _truncate(str(v), MAX_TAG_VALUE_LENGTH) for k, v in tags.items()})

    def log_input(
        self,
        df: pd.DataFrame,
        *,
        name: str,
        context: str,
        source: str | None = None,
        targets: str | None = None,
    ) -> None:
        """Record a dataset used by the run (``mlflow.data.from_pandas`` + ``mlflow.log_input``).

        MLflow stores the frame's schema, a digest (of its first rows) and its row count, not the
        data. Pass the frame the model saw (a feature matrix), or a sample or summary of a very
        large one: the schema is inferred from every row given.

        Args:
            df: The frame.
            name: Dataset name shown in the UI, e.g. ``"cross_sell.train"``.
            context: Its role, e.g. ``"training"``, ``"validation"``, ``"holdout"``.
            source: Where it came from (a data folder); default: the calling code.
            targets: Name of the label column, if any.
        """
        import mlflow

        _ = self.run_id
        dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]  # set at import
            df, source=source, targets=targets, name=name
        )
        mlflow.log_input(dataset, context=context)

    def log_figure(self, fig: Figure, path: str) -> None:
        """Save a matplotlib figure as a run artifact at ``path`` (e.g. ``plots/gain.png``)."""
        import mlflow

        _ = self.run_id
        mlflow.log_figure(fig, path)

    def log_table_csv(self, df: pd.DataFrame, path: str) -> None:
        """Save a DataFrame as a CSV run artifact at ``path`` (e.g. ``eval/slices.csv``)."""
        import mlflow

        _ = self.run_id
        relative = Path(path)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / relative.name
            df.to_csv(local, index=False)
            parent = relative.parent.as_posix()
            mlflow.log_artifact(str(local), artifact_path=None if parent == "." else parent)

    def log_dict(self, d: Mapping[str, Any], path: str) -> None:
        """Save a dict as a run artifact (JSON, or YAML if ``path`` ends in ``.yaml``/``.yml``)."""
        import mlflow

        _ = self.run_id
        mlflow.log_dict(dict(d), path)

    def log_model(
        self,
        python_model: PythonModel,
        artifacts_dir: Path,
        input_example: pd.DataFrame,
        output_example: Any,
        *,
        pip_requirements: Sequence[str] | None = None,
        name: str = "model",
    ) -> str:
        """Log a pyfunc model whose files are the folder ``artifacts_dir``.

        The folder is copied into the model as artifact ``"model_dir"``
        (``context.artifacts["model_dir"]`` in ``load_context``). The signature is inferred
        from ``input_example`` and ``output_example``.

        Args:
            python_model: The ``mlflow.pyfunc.PythonModel`` instance.
            artifacts_dir: Local folder with the model files.
            input_example: A few rows of the model input (stored with the model).
            output_example: What ``predict`` returns for it, or a ready ``ModelSignature``.
            pip_requirements: Requirements to pin; passing them skips MLflow's slow inference.
            name: Model name within the run.

        Returns:
            The model URI (``models:/<model_id>``), for :meth:`register`.
        """
        import mlflow
        from mlflow.models import ModelSignature, infer_signature

        _ = self.run_id
        signature: ModelSignature = (
            output_example
            if isinstance(output_example, ModelSignature)
            else infer_signature(input_example, output_example)
        )
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts={MODEL_ARTIFACT_KEY: str(artifacts_dir)},
            signature=signature,
            input_example=input_example,
            pip_requirements=None if pip_requirements is None else list(pip_requirements),
        )
        return info.model_uri

    # ---- registry and aliases

    def register(self, model_uri: str, name: str = DEFAULT_MODEL_NAME) -> int:
        """Register ``model_uri`` as a new version of ``name`` (created if needed); sets no alias.

        Returns:
            The new version number.
        """
        import mlflow

        from training.output import mlflow_prints

        with mlflow_prints():  # MLflow prints "Created version ..." to stderr
            return int(mlflow.register_model(model_uri, name).version)

    def describe_version(
        self, name: str, version: int, description: str, tags: Mapping[str, Any] | None = None
    ) -> None:
        """Set a model version's description and tags (shown in the MLflow registry UI)."""
        self.client.update_model_version(name, str(version), description=description)
        for key, value in (tags or {}).items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``name@alias`` at ``version`` (moving it off any other version)."""
        self.client.set_registered_model_alias(name, alias, str(version))

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``name@alias`` points at, or ``None`` (no such alias or model)."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        try:
            model = self.client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                return None
            raise
        version = model.aliases.get(alias)
        return None if version is None else self.client.get_model_version(name, str(version))

    def promote(self, name: str, version: int) -> int | None:
        """Make ``version`` the champion of ``name``.

        Returns:
            The previous champion version, if any.

        Raises:
            ValueError: No such model or version.
        """
        from mlflow.exceptions import MlflowException

        previous = self.get_version_by_alias(name, CHAMPION)
        try:
            self.set_alias(name, CHAMPION, version)
        except MlflowException as exc:
            raise ValueError(f"cannot promote {name} version {version}: {exc.message}") from exc
        log.info(
            "%s@%s: version %s (was %s)", name, CHAMPION, version, previous and previous.version
        )
        return None if previous is None else int(previous.version)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric logged by run ``run_id``."""
        return dict(self.client.get_run(run_id).data.metrics)

    def version_run_id(self, name: str, version: int) -> str | None:
        """The run that produced model version ``version`` of ``name``."""
        return self.client.get_model_version(name, str(version)).run_id

    def get_version(self, name: str, version: int) -> ModelVersion:
        """Model version ``version`` of ``name``.

        Raises:
            ValueError: No such model or version (one clear message, for the CLI).
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            raise ValueError(f"no version {version} of registered model {name!r}") from exc


def _json_param(value: Any) -> str:
    """A JSON query value, percent-encoded so that terminals keep the link clickable (the UI
    decodes it with ``qs.parse`` before ``JSON.parse``)."""
    import json
    from urllib.parse import quote

    return quote(json.dumps(value, separators=(",", ":")), safe=",:")


def compare_runs_url(
    run_ids: Sequence[str], experiment_ids: Sequence[str], ui: str = DEFAULT_UI_URL
) -> str:
    """The MLflow UI's compare-runs view of ``run_ids`` (MLflow 3's hash route).

    The UI builds it as ``#/compare-runs?runs=<JSON list>&experiments=<JSON list>``
    (``Routes.getCompareRunPageRoute``); experiment ids are listed once each, in order.
    """
    experiments = list(dict.fromkeys(experiment_ids))
    runs, exps = _json_param(list(run_ids)), _json_param(experiments)
    return f"{ui.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}"


def compare_versions_url(
    name: str, runs_by_version: Mapping[int | str, str], ui: str = DEFAULT_UI_URL
) -> str:
    """The MLflow UI's compare-model-versions view (``#/compare-model-versions?name=..&runs=..``,
    ``ModelRegistryRoutes.getCompareModelVersionsPageRoute``)."""
    from urllib.parse import quote

    runs = _json_param({str(k): v for k, v in runs_by_version.items()})
    return f"{ui.rstrip('/')}/#/compare-model-versions?name={_json_param(quote(name))}&runs={runs}"

"""What the command line prints: xsell's own lines, not the libraries' notes.

:func:`configure_output` is called once per CLI invocation. Quiet (the default) it hides
MLflow's INFO and WARNING logs (its CloudPickle warning, "Validating input example", database
setup), its ``UserWarning``\\ s (the integer-schema hint), its artifact-download progress bars,
and INFO logs of every library; ``--verbose`` keeps them all. xsell's own progress goes through
``typer.echo`` and :class:`training.progress.Progress`, so it is printed either way.

:func:`mlflow_prints` catches the lines MLflow ``print``\\ s to stderr unconditionally on
registration ("Registered model ... already exists", "Created version ...") and turns them into
INFO logs of ``training.tracking`` (shown with ``--verbose``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator

log = logging.getLogger("training.tracking")

# (environment variable, quiet value): read by MLflow when it is imported or at use.
QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
NOISY_LOGGERS = ("mlflow", "alembic", "huey", "urllib3", "git", "lightgbm", "bentoml")
_MLFLOW_PRINTS = re.compile(
    r"^(Successfully registered model '|Created version '|Registered model '.*' already exists)"
)

_verbose = False


def is_verbose() -> bool:
    """Whether :func:`configure_output` was last called with ``verbose=True``."""
    return _verbose


def configure_output(verbose: bool) -> None:
    """Quiet the libraries (default) or let them speak (``verbose``).

    Environment variables the user set are respected. Logging is configured with
    ``logging.basicConfig`` (a no-op when the root logger already has handlers, as under
    pytest); the library loggers' levels are set either way.
    """
    global _verbose
    _verbose = verbose
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # MLflow's hints (integer schema, ...) and deprecations of its dependencies.
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(pydantic|sqlalchemy)")


@contextlib.contextmanager
def mlflow_prints() -> Iterator[None]:
    """Catch what MLflow prints to stderr in the block: its registration notes become INFO
    logs, anything else is written back to stderr."""
    caught = io.StringIO()
    try:
        with contextlib.redirect_stderr(caught):
            yield
    finally:
        for line in caught.getvalue().splitlines():
            if _MLFLOW_PRINTS.match(line):
                log.info("%s", line)
            elif line.strip():
                print(line, file=sys.stderr)

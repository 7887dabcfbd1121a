"""Shared by the MLflow tests: no tracking URI leaks in from, or out to, the environment."""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import pytest

URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def clear_uri_env(mp: pytest.MonkeyPatch) -> None:
    """Remove the URI variables; recorded so the undo also removes what MLflow exports."""
    for var in URI_VARS:
        mp.setenv(var, "")
        mp.delenv(var)


def forget_uris() -> None:
    """Reset MLflow's process-wide tracking and registry URIs."""
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(autouse=True)
def no_uri_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No tracking URI from the environment; MLflow's exported URIs undone after each test."""
    clear_uri_env(monkeypatch)
    yield
    forget_uris()

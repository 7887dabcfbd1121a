"""Shared by the serving tests: the shared trained model as a folder, and a real
``xsell serve`` on a free port of 127.0.0.1 (started, waited for, stopped)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from mlflow_isolation import forget_uris
from trained_model import MODEL_NAME, Trained

from training.model import export_model


@dataclass(frozen=True)
class LiveServer:
    """A running server: its base URL, the file its output goes to, its process (group) id."""

    base: str
    log: Path
    pid: int = 0


def export_shared_model(trained: Trained, folder: Path) -> tuple[Path, str]:
    """The shared trained model's registered version as a model folder, and its version."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", trained.uri)
        out = export_model(f"models:/{MODEL_NAME}/{trained.result.version}", folder)
        forget_uris()
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def xsell_serve(
    model_dir: Path,
    home: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    args: Sequence[str] = (),
) -> Iterator[LiveServer]:
    """``xsell serve --model model_dir --store home/store`` until ``/readyz`` answers 200;
    stopped on exit.

    Args:
        model_dir: The model folder to serve.
        home: ``BENTOML_HOME``, the folder of ``server.log`` and of the event store.
        env: Extra environment variables (None: remove the variable).
        args: Further ``xsell serve`` options (``--store`` here replaces the default).
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    environ = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    log_path = home / "server.log"
    cli = [sys.executable, "-c", "from training.cli import main; main()"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                *cli,
                "serve",
                "--port",
                str(port),
                "--model",
                str(model_dir),
                *([] if "--store" in args else ["--store", str(home / "store")]),
                *args,
            ],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not get ready"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        yield LiveServer(base, log_path, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have killed it already
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _reap(proc.pid, home)


def _reap(pgid: int, home: Path, grace: float = 10.0) -> None:
    """Wait for the server's other processes to exit, then kill what is left: a worker outliving
    the test keeps loading the machine for the tests after it.

    They are the server's process group and every process started with this server's
    ``BENTOML_HOME`` (a BentoML worker runs in a session of its own, so after its server was
    killed outright it is in no group of ours).
    """
    mine = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if p.pid != os.getpid() and (
                os.getpgid(p.pid) == pgid or p.environ().get("BENTOML_HOME") == str(home)
            ):
                mine.append(p)
    _, alive = psutil.wait_procs(mine, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)

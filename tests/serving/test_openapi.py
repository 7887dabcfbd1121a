"""The OpenAPI document tells the truth, and a real server is quiet.

One ``xsell serve`` subprocess serves the suite's shared trained model (``trained_model``,
exported from its registry as in ``test_serving.py``). schemathesis loads the server's live
``/docs.json`` and fuzzes every operation in it with its engine (what its CLI runs: coverage and
fuzzing phases, positive and negative data): every answer must be declared for its operation with a body matching the
declared schema and content type, and none may be a 5xx. The server's log is then read: no
traceback, no access-log line by default, and one line per rejected request.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from live_server import LiveServer, export_shared_model, xsell_serve
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events
from trained_model import Trained
from typer.testing import CliRunner

import serving.__main__ as serving_main
from serving.service import ACCESS_LOG_ENV, TRACING_ENV, _logging_config, _tracing_config
from training.cli import app as cli_app

# Examples per operation in the fuzzing phase (the coverage phase adds its own edge cases):
# about 400 requests, ~10 s on 2 cores.
MAX_EXAMPLES = 25
# BentoML's access-log line: "... (scheme=http,method=POST,path=/recommend,...) (status=..."
ACCESS_LOG_MARK = "(scheme=http,method="

FUZZ_CONFIG = {
    "cache": {"enabled": False},  # no .schemathesis/ folder in the working tree; runs repeat
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
    "checks": {
        # A body valid against the request schema can still be refused with a 400: the
        # cross-field rules (product_page needs a product_id, at least one k > 0, upsell ranks
        # need an anchor) are model validators that the JSON Schema does not express. Every other
        # check runs, negative_data_rejection included (schema-invalid data must be a 4xx).
        "positive_data_acceptance": {"enabled": False},
    },
}


@pytest.fixture(scope="module")
def model_dir(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared trained model's version 1, exported from its registry as a folder."""
    return export_shared_model(trained, tmp_path_factory.mktemp("openapi") / "model")[0]


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``xsell serve`` with default flags (no access log), its output in a file."""
    env = {ACCESS_LOG_ENV: None, "PYTHONUNBUFFERED": "1"}  # log lines reach the file at once
    with xsell_serve(model_dir, tmp_path_factory.mktemp("bentoml"), env=env) as live:
        yield live


@dataclass
class FuzzRun:
    """What one schemathesis run against the live server saw."""

    calls: Counter[str] = field(default_factory=Counter)  # per operation, e.g. "POST /rank"
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # failed checks and engine errors


@pytest.fixture(scope="module")
def fuzz_run(server: LiveServer) -> FuzzRun:
    """schemathesis's engine (what its CLI runs) over every operation of the live document."""
    schema = schemathesis.openapi.from_url(
        f"{server.base}/docs.json", config=SchemathesisConfig.from_dict(FUZZ_CONFIG)
    )
    run = FuzzRun()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                run.calls[recorder.label] += 1
                if interaction.response is not None:
                    run.statuses[interaction.response.status_code] += 1
            for checks in recorder.checks.values():
                run.failures += [
                    f"{recorder.label}: {check.name}: {check.failure_info.failure.title}\n"
                    f"  {check.failure_info.code_sample}"
                    for check in checks
                    if check.failure_info is not None
                ]
        elif isinstance(event, events.NonFatalError | events.FatalError):
            run.failures.append(f"engine error: {event!r}")
    return run


@pytest.mark.server
def test_the_document_declares_every_route_and_answer(server: LiveServer) -> None:
    doc = httpx.get(f"{server.base}/docs.json").json()
    assert doc["openapi"] == "3.1.0"
    paths = doc["paths"]
    for route in ("/recommend", "/rank", "/events", "/feedback"):
        post = paths[route]["post"]
        store = {"503"} if route in ("/events", "/feedback") else set()
        assert set(post["responses"]) == {"200", "400", "413", "415", "500", *store}
        body = post["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].startswith("#/components/schemas/")
    schemas = doc["components"]["schemas"]
    detail = schemas["ValidationErrorBody"]["properties"]["detail"]
    assert detail["type"] == "array"
    assert {"InvalidArgument", "NotFound"}.isdisjoint(schemas)
    assert set(paths["/model"]) == {"get"} and set(paths["/preview"]) == {"get"}
    assert "text/plain" in paths["/healthz"]["get"]["responses"]["200"]["content"]
    ready = paths["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ready["schema"]["$ref"].endswith("/ReadyBody")


@pytest.mark.server
def test_live_service_matches_its_openapi_document(fuzz_run: FuzzRun) -> None:
    """No 5xx, and every answer is declared (status, content type, headers, body schema)."""
    summary = f"calls {dict(fuzz_run.calls)}, statuses {dict(sorted(fuzz_run.statuses.items()))}"
    print(summary)
    assert not fuzz_run.failures, "\n".join([summary, *fuzz_run.failures[:20]])
    assert not any(code >= 500 for code in fuzz_run.statuses), summary
    assert set(fuzz_run.calls) >= {
        "POST /recommend",
        "POST /rank",
        "POST /events",
        "POST /feedback",
        "GET /model",
        "GET /preview",
        "GET /healthz",
        "GET /readyz",
    }, summary
    assert fuzz_run.statuses[200] and fuzz_run.statuses[400], summary


@pytest.mark.server
def test_rejected_requests_log_one_line_each(server: LiveServer, fuzz_run: FuzzRun) -> None:
    """After the fuzzing (hundreds of 4xx): no traceback, no access-log line, and each malformed
    request below logs exactly one line."""
    malformed = [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"placement": "cart"}', "application/json"),
        (b'{"customer_id": "C1", "placement": "nowhere"}', "application/json"),
        (b"customer_id=C1", "application/x-www-form-urlencoded"),
    ]
    before = server.log.read_text().count("\n")
    with httpx.Client(base_url=server.base, timeout=10) as client:
        for body, media in malformed:
            r = client.post("/recommend", content=body, headers={"content-type": media})
            assert 400 <= r.status_code < 500, r.text
        assert client.get("/healthz").status_code == 200
    time.sleep(0.5)  # the worker writes its lines after answering
    text = server.log.read_text()
    new = text.splitlines()[before:]
    assert "Traceback" not in text
    assert ACCESS_LOG_MARK not in text  # access log off by default
    rejected = [line for line in new if " rejected: " in line]
    assert len(new) == len(rejected) == len(malformed), new
    assert [line.split("] ", 2)[-1].split(" rejected")[0] for line in rejected] == [
        "400 POST /recommend",
        "400 POST /recommend",
        "400 POST /recommend",
        "400 POST /recommend",
        "415 POST /recommend",
    ]
    assert "customer_id: Field required" in rejected[2] and "placement" in rejected[3]


def test_access_log_is_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """``xsell serve --access-log`` -> ``python -m serving --access-log`` -> ``serve(access_log=
    True)`` -> $XSELL_ACCESS_LOG, which the workers' service config reads (BentoML's
    ``logging.access.enabled``); without the flag it stays off."""
    commands: list[list[str]] = []
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda cmd, **_: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0),
    )
    runner = CliRunner()
    for flags in ([], ["--access-log"]):
        assert runner.invoke(cli_app, ["serve", *flags]).exit_code == 0
    assert ["--access-log" in cmd for cmd in commands] == [False, True]

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(serving_main, "serve", lambda **kw: calls.append(kw))
    for argv in (["python -m serving"], ["python -m serving", "--access-log"]):
        monkeypatch.setattr(sys, "argv", argv)
        serving_main.main()
    assert [c["access_log"] for c in calls] == [False, True]

    monkeypatch.delenv(ACCESS_LOG_ENV, raising=False)
    assert _logging_config() == {"access": {"enabled": False}}
    monkeypatch.setenv(ACCESS_LOG_ENV, "1")
    assert _logging_config() == {"access": {"enabled": True}}


def test_tracing_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OpenTelemetry spans per request (nothing exports them) unless $XSELL_TRACING=1."""
    monkeypatch.delenv(TRACING_ENV, raising=False)
    assert _tracing_config() == {"excluded_urls": ["."]}
    monkeypatch.setenv(TRACING_ENV, "1")
    assert _tracing_config() == {}

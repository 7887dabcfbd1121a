"""Quiet serving logs: a rejected request (4xx) is one INFO line, never a traceback.

BentoML 1.4 logs every exception of an API call with ``logger.error(..., exc_info=True)``
(``bentoml._internal.server.http_app.log_exception``), a validation error of the request body
included: a bad request costs an ERROR line and a Python traceback. :class:`ClientErrorFilter`,
installed on that logger by :func:`quiet_client_errors`, rewrites those records in place into
``400 POST /recommend rejected: customer_id: Field required; ...`` at INFO, with no traceback;
server errors (5xx) keep their traceback. :func:`log_rejected` writes the same line for the
requests :class:`serving.service.RequestGuard` refuses (413, 415).

The lines go to :data:`REJECTED`, a child of the ``bentoml`` logger, so BentoML's server logging
configuration (handler, format, trace ids) applies to them.
"""

from __future__ import annotations

import logging
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

# The logger BentoML's log_exception writes to.
BENTOML_EXCEPTIONS = "bentoml._internal.server.http_app"
REJECTED = logging.getLogger("bentoml.xsell.rejected")
MAX_REASON = 300


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _reason(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    return "; ".join(parts)


def client_error(exc: BaseException | None) -> tuple[int, str] | None:
    """``(status, reason)`` when ``exc`` answers a 4xx (the client's mistake), else None."""
    if isinstance(exc, ValidationError):
        return 400, _reason(exc)
    if isinstance(exc, BentoMLException) and exc.error_code.value < 500:
        return int(exc.error_code.value), str(exc)
    return None


def _message(status: int, method: str, path: str, reason: str) -> tuple[str, tuple[Any, ...]]:
    return "%d %s %s rejected: %s", (status, method, _one_line(path), _one_line(reason))


def log_rejected(status: int, method: str, path: str, reason: str) -> None:
    """Log one line for a request answered with a 4xx."""
    msg, args = _message(status, method, path, reason)
    REJECTED.info(msg, *args)


class ClientErrorFilter(logging.Filter):
    """Turns BentoML's ``Exception on PATH [METHOD]`` + traceback for a 4xx into one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        found = client_error(exc)
        if found is None:
            return True
        path, method = (record.args if isinstance(record.args, tuple) else ("?", "?"))[:2]
        record.msg, record.args = _message(found[0], str(method), str(path), found[1])
        record.exc_info = record.exc_text = None
        record.stack_info = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_client_errors() -> None:
    """Install :class:`ClientErrorFilter` on BentoML's exception logger (once)."""
    logger = logging.getLogger(BENTOML_EXCEPTIONS)
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())

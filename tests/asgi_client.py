"""Drive the service's ASGI app in-process (no server): a synchronous client with the app's
lifespan run on a private event loop (shared by the serving tests)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
from prometheus_client import REGISTRY


def _forget_bentoml_metrics() -> None:
    """Unregister BentoML's Prometheus collectors from the process registry.

    Each app registers them on its first request; a second app in one test process would
    collide with the first one's (``DuplicateTimeseries``).
    """
    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(name.startswith("bentoml_") for name in names):
            REGISTRY.unregister(collector)


class AsgiClient:
    """A synchronous client for an ASGI app, with its lifespan run on a private event loop."""

    def __init__(self, app: Any) -> None:
        _forget_bentoml_metrics()
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._call(self._open())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def _open(self) -> None:
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()
        transport = httpx.ASGITransport(app=self.app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://xsell")

    async def _close(self) -> None:
        await self.client.aclose()
        await self.lifespan.__aexit__(None, None, None)

    def get(self, url: str) -> httpx.Response:
        return self._call(self.client.get(url))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._call(self.client.post(url, **kwargs))

    def close(self) -> None:
        self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

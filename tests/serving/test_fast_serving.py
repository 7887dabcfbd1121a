"""Serving-worker set-up that keeps scores unchanged (one BLAS thread, frozen start-up objects)
and the benchmark's plain-socket client (it must read what the server answers)."""

from __future__ import annotations

import asyncio
import gc
import json

import pytest
from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

from benchmarks.serving import raw_request, read_response
from serving.service import freeze_loaded_objects, single_thread_blas


def test_single_thread_blas_limits_every_blas_library() -> None:
    single_thread_blas()
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert blas, "numpy links a BLAS"
    assert all(lib["num_threads"] == 1 for lib in blas)


def test_freeze_loaded_objects_freezes_what_exists() -> None:
    try:
        freeze_loaded_objects()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_raw_request_is_a_json_post_with_its_length() -> None:
    body = {"customer_id": "C1", "placement": "cart", "cart": ["P1"]}
    wire = raw_request("127.0.0.1:3000", "/recommend", body)
    head, payload = wire.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /recommend HTTP/1.1"
    assert "Content-Type: application/json" in lines
    assert f"Content-Length: {len(payload)}" in lines
    assert json.loads(payload) == body
    get = raw_request("127.0.0.1:3000", "/healthz", None)
    assert get.startswith(b"GET /healthz HTTP/1.1\r\n") and get.endswith(b"\r\n\r\n")


def _read(data: bytes) -> tuple[int, bytes, bool]:
    async def go() -> tuple[int, bytes, bool]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_response(reader)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("wire", "status", "body", "close"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 200, b"{}", False),
        (
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
            b"\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            400,
            b"abcde",
            True,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", False),
    ],
)
def test_read_response_reads_one_whole_answer(
    wire: bytes, status: int, body: bytes, close: bool
) -> None:
    assert _read(wire) == (status, body, close)


def test_read_response_leaves_the_next_answer_on_the_connection() -> None:
    async def go() -> list[tuple[int, bytes, bool]]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")
        reader.feed_data(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1\r\n\r\nB")
        reader.feed_eof()
        return [await read_response(reader), await read_response(reader)]

    assert asyncio.run(go()) == [(200, b"A", False), (503, b"B", False)]

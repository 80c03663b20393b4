"""The coalescing HTTP protocol: one write per response, same bytes, bounded buffering.

A real uvicorn server runs the protocol on a loopback port in a thread; a recorder between the
real transport and the coalescing one notes every write that reaches the socket.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from service.api.http_protocol import FLUSH_BYTES, CoalescingHttpToolsProtocol

WRITES: list[bytes] = []
BIG = 5 * FLUSH_BYTES


class _Recorder:
    """Forwards to the real transport, keeping a copy of every write."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class RecordingProtocol(CoalescingHttpToolsProtocol):
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(_Recorder(transport))


async def _small(request: Any) -> JSONResponse:
    return JSONResponse({"x": request.query_params.get("x")})


async def _stream(request: Any) -> StreamingResponse:
    async def chunks() -> Any:
        for i in range(BIG // 1024):
            yield bytes([65 + i % 26]) * 1024  # never awaits anything: one loop iteration

    return StreamingResponse(chunks(), media_type="application/octet-stream")


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    app = Starlette(routes=[Route("/small", _small), Route("/stream", _stream)])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free, http=RecordingProtocol, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield free
    server.should_exit = True
    thread.join(10)


def test_each_small_response_leaves_in_one_write(port):
    WRITES.clear()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    bodies = []
    for i in range(3):  # one keep-alive connection
        conn.request("GET", f"/small?x={i}")
        response = conn.getresponse()
        assert response.status == 200
        bodies.append(response.read())
    conn.close()
    assert bodies == [f'{{"x":"{i}"}}'.encode() for i in range(3)]
    assert len(WRITES) == 3
    for i, data in enumerate(WRITES):  # head and body together
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(f'{{"x":"{i}"}}'.encode())


def test_a_streamed_body_arrives_whole_without_piling_up(port):
    WRITES.clear()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/stream")
    body = conn.getresponse().read()
    conn.close()
    assert body == b"".join(bytes([65 + i % 26]) * 1024 for i in range(BIG // 1024))
    assert len(WRITES) > 1  # flushed as the buffer passed FLUSH_BYTES, not once at the end
    assert max(len(w) for w in WRITES) < FLUSH_BYTES + 2048


def test_connection_close_sends_what_is_waiting_first(port):
    WRITES.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /small?x=bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):  # the server closes after the response
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b'{"x":"bye"}')

"""The benchmark's raw-socket HTTP client against a real HTTP/1.1 server (``http.server``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.http_load import KeepAliveConnection, encode_request


class _Echo(BaseHTTPRequestHandler):
    """GET /size/N answers N bytes; POST echoes method, path and body as JSON with status 201;
    GET /nolength answers without a Content-Length (closing the connection)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/nolength":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"unframed")
            return
        size = int(self.path.rsplit("/", 1)[1])
        body = (bytes(range(256)) * (size // 256 + 1))[:size]
        self._send(200, body)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        echo = {"path": self.path, "type": self.headers["Content-Type"], "body": data.decode()}
        self._send(201, json.dumps(echo).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_keep_alive_exchanges_return_status_and_whole_body(server: int) -> None:
    sizes = [0, 1, 300, 200_000, 17]  # one body spans several recv() calls
    with KeepAliveConnection("127.0.0.1", server) as conn:
        for size in sizes:
            status, body = conn.exchange(encode_request("GET", f"/size/{size}", None, "127.0.0.1", server))
            assert status == 200
            assert len(body) == size
            assert body[:256] == bytes(range(min(size, 256)))
        payload = json.dumps({"points": [[1.5, -2.0]]}).encode()
        status, body = conn.exchange(encode_request("POST", "/density", payload, "127.0.0.1", server))
    assert status == 201
    assert json.loads(body) == {"path": "/density", "type": "application/json", "body": payload.decode()}


def test_pipelined_responses_in_one_read_are_split_by_length(server: int) -> None:
    with KeepAliveConnection("127.0.0.1", server) as conn:
        two = encode_request("GET", "/size/5", None, "127.0.0.1", server) + encode_request(
            "GET", "/size/7", None, "127.0.0.1", server
        )
        assert conn.exchange(two) == (200, bytes(range(5)))
        assert conn.exchange(b"") == (200, bytes(range(7)))  # already sent: read the second answer


def test_a_response_without_content_length_is_rejected(server: int) -> None:
    with KeepAliveConnection("127.0.0.1", server) as conn, pytest.raises(ValueError, match="Content-Length"):
        conn.exchange(encode_request("GET", "/nolength", None, "127.0.0.1", server))

"""A lean keep-alive HTTP/1.1 client for load generation: pre-encoded requests over raw sockets.

``http.client`` spends a few hundred microseconds of Python per request (header objects, the
``email`` parser for the response), which on a 2-core machine is CPU taken from the server being
measured. This client sends pre-encoded request bytes and reads each response by its
``Content-Length``: the status and the whole body are read, nothing else is interpreted. Responses
without a length (chunked, or close-delimited) are rejected loudly rather than mis-measured.
"""

from __future__ import annotations

import socket

__all__ = ["KeepAliveConnection", "encode_request"]

_RECV = 65536


def encode_request(method: str, path: str, body: bytes | None, host: str, port: int) -> bytes:
    """The bytes of one HTTP/1.1 request (JSON body if any), ready to send as-is."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError(f"response without Content-Length: {head[:200]!r}")


class KeepAliveConnection:
    """One persistent connection; ``exchange`` sends a request and returns ``(status, body)``."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._recv()
        head, rest = buffer[:end], buffer[end + 4 :]
        if not head.startswith(b"HTTP/1.1 "):
            raise ValueError(f"not an HTTP/1.1 response: {head[:200]!r}")
        length = _content_length(head)
        while len(rest) < length:
            rest += self._recv()
        self._buffer = rest[length:]
        return int(head[9:12]), rest[:length]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(_RECV)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-response")
        return chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> KeepAliveConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

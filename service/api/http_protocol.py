"""uvicorn's httptools protocol, sending each response in one write instead of two.

uvicorn writes a response's head as soon as the app sends ``http.response.start`` and its body on
``http.response.body``: two ``send`` system calls, each made while holding the GIL, and on a
keep-alive connection two wake-ups of the client (it reads the head, then waits for the body).

:class:`CoalescingHttpToolsProtocol` hands uvicorn a transport that gathers what is written during
one event-loop iteration and sends it in one write at the end of that iteration (at once when more
than ``FLUSH_BYTES`` are waiting, so a streamed body never piles up). Everything else is forwarded
to the real transport; ``close`` and ``write_eof`` send what is waiting first.

Use it with ``uvicorn.run(..., http=CoalescingHttpToolsProtocol)`` or, on the command line,
``uvicorn --http service.api.http_protocol:CoalescingHttpToolsProtocol``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["FLUSH_BYTES", "CoalescingHttpToolsProtocol", "CoalescingTransport"]

FLUSH_BYTES = 64 * 1024


class CoalescingTransport:
    """Forwards to ``transport``; the writes of one loop iteration leave in one ``write``."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send what is waiting (nothing happens when nothing is, or the connection is closing)."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending, self._pending_bytes = [], 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def __getattr__(self, name: str) -> Any:  # every other transport method, as is
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` on a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

"""Which runs have a message in the Redis broker: the reconciler's view of "still on its way".

Kombu's Redis transport keeps a queue as lists (``<queue>`` and ``<queue>\\x06\\x16<priority>``) and
messages delivered but not yet acknowledged in the ``unacked`` hash, with their delivery time in the
``unacked_index`` sorted set. A run id is found in a message's headers (``argsrepr``) or, failing
that, in its base64 body. Only ids are read; nothing is unpickled (messages are JSON).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import redis

__all__ = ["BrokerView", "scan_broker"]

UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)  # kombu's default steps besides 0
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


@dataclass(frozen=True)
class BrokerView:
    """Run ids waiting in the queue, and run ids delivered to a worker within the grace period."""

    waiting: frozenset[str] = field(default_factory=frozenset)
    delivered: frozenset[str] = field(default_factory=frozenset)

    @property
    def live(self) -> frozenset[str]:
        return self.waiting | self.delivered


def _ids(raw: bytes) -> set[str]:
    found = {m.decode() for m in UUID_RE.findall(raw)}
    try:
        message: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return found
    if isinstance(message, list) and message:  # unacked entries: [payload, exchange, routing_key]
        message = message[0]
    body = message.get("body") if isinstance(message, dict) else None
    if isinstance(body, str):
        try:
            found |= {m.decode() for m in UUID_RE.findall(base64.b64decode(body, validate=True))}
        except (binascii.Error, ValueError):
            found |= {m.decode() for m in UUID_RE.findall(body.encode())}
    return found


def scan_broker(client: redis.Redis, queue: str, *, delivered_within_s: float) -> BrokerView:
    """Read the queue lists and the unacked messages delivered less than ``delivered_within_s`` ago.

    Raises redis errors when the broker is unreachable (the caller skips its pass).
    """
    waiting: set[str] = set()
    for key in (queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS)):
        for raw in client.lrange(key, 0, -1):
            waiting |= _ids(raw)
    delivered: set[str] = set()
    recent = client.zrangebyscore(UNACKED_INDEX, time.time() - delivered_within_s, "+inf")
    if recent:
        for raw in client.hmget(UNACKED, recent):
            if raw is not None:
                delivered |= _ids(raw)
    return BrokerView(frozenset(waiting), frozenset(delivered))

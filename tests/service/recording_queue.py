"""``RecordingQueue`` stands where the broker would in API tests: it remembers run ids, runs nothing."""

from __future__ import annotations


class RecordingQueue:
    """The API's dispatcher interface (``enqueue``, ``ping``); ``queued`` lists the run ids."""

    def __init__(self) -> None:
        self.queued: list[str] = []

    def enqueue(self, run_id: str) -> None:
        self.queued.append(run_id)

    def ping(self) -> None:
        return None

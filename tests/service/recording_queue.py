"""``RecordingQueue`` stands where the broker would in API tests: it remembers run ids, runs nothing."""

from __future__ import annotations


class RecordingQueue:
    """The API's dispatcher interface (``enqueue``, ``ping``); ``queued`` lists the run ids."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.devices: dict[str, str] = {}  # run id -> the device it was published for

    def enqueue(self, run_id: str, device: str = "auto") -> None:
        self.queued.append(run_id)
        self.devices[run_id] = device

    def ping(self) -> None:
        return None

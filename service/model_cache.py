"""A bounded LRU of loaded models, keyed by run id and checkpoint digest.

Keying by digest means a retrained or replaced checkpoint is never served from a stale entry. Each
entry carries a lock: inference on one model is serialised (the CNF keeps per-solve state), while
different models run in parallel in the threadpool.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from service.ml.checkpoint import load_checkpoint
from service.ml.models import DensityModel
from service.store import ModelStore

__all__ = ["CachedModel", "ModelCache"]


@dataclass
class CachedModel:
    model: DensityModel
    digest: str
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelCache:
    """Load checkpoints from ``store`` on first use; keep the ``capacity`` most recently used."""

    def __init__(self, store: ModelStore, capacity: int = 8) -> None:
        self.store = store
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], CachedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str, digest: str) -> CachedModel:
        """The model of ``run_id``; raises CheckpointError when its checkpoint fails verification."""
        key = (run_id, digest)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        loaded = load_checkpoint(self.store.run_dir(run_id), expected_digest=digest)
        entry = CachedModel(model=loaded.model, digest=digest)
        with self._lock:
            entry = self._entries.setdefault(key, entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return entry

    def discard(self, run_id: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == run_id]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

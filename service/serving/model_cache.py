"""A bounded LRU of loaded models, keyed by run id and checkpoint digest.

Keying by digest means a retrained or replaced checkpoint is never served from a stale entry.
Concurrent first queries on one checkpoint share a single load (:class:`SingleFlight`). Each
entry carries a lock: inference on one model is serialised (the CNF keeps per-solve state), while
different models run in parallel in the threadpool. Each entry's :class:`Batcher` merges concurrent
density requests into one pass (``service.serving.batching``).

The cache also remembers, for ``SERVED_RUN_TTL_S``, which checkpoint a *succeeded* run serves, so a
query on a hot run needs no database round trip. A succeeded run only changes by being deleted:
``discard`` (called by ``DELETE /runs/{id}``) forgets it at once in this process; other API
processes stop serving it within the TTL. With a ``confirm`` callback, a run recalled in the last
``REFRESH_AHEAD_S`` of its TTL is read again in a background thread (one at a time per run), so a
run under steady load never expires: without it, every TTL all the concurrent queries on the run
fell through to a database lookup at once (about 2 % of the API's CPU under 16 one-point clients).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from service.ml.checkpoint import load_checkpoint
from service.ml.models import DensityModel
from service.serving.batching import Batcher, BatchPolicy
from service.storage.models_store import ModelStore
from service.storage.single_flight import SingleFlight

__all__ = ["REFRESH_AHEAD_S", "SERVED_RUN_TTL_S", "CachedModel", "ModelCache", "ServedRun"]

log = logging.getLogger(__name__)

SERVED_RUN_TTL_S = 2.0
REFRESH_AHEAD_S = 0.5


@dataclass
class CachedModel:
    model: DensityModel
    digest: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    on_pass: Callable[[int], None] | None = None
    batcher: Batcher = field(init=False)
    dtype: torch.dtype = field(init=False)  # of the model's parameters: what inputs are cast to

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.model, self.lock, self.policy, self.on_pass)
        self.dtype = next(self.model.parameters()).dtype


@dataclass(frozen=True)
class ServedRun:
    """What serving needs of a succeeded run's row."""

    id: str
    model: str
    status: str
    checkpoint_sha256: str


class ModelCache:
    """Load checkpoints from ``store`` on first use; keep the ``capacity`` most recently used."""

    def __init__(
        self,
        store: ModelStore,
        capacity: int = 8,
        policy: BatchPolicy | None = None,
        on_pass: Callable[[int], None] | None = None,
        confirm: Callable[[str], ServedRun | None] | None = None,
    ) -> None:
        """``on_pass(n)`` is told the request count of every batched model pass (for metrics);
        ``confirm(run_id)`` reads the run again (None: it no longer serves), see the module doc."""
        self.store = store
        self.capacity = capacity
        self.policy = policy or BatchPolicy()
        self.on_pass = on_pass
        self.confirm = confirm
        self._entries: OrderedDict[tuple[str, str], CachedModel] = OrderedDict()
        self._runs: dict[str, tuple[float, ServedRun]] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()
        self._loading: SingleFlight[CachedModel] = SingleFlight()  # one load per cold checkpoint

    def recall(self, run_id: str) -> ServedRun | None:
        """The succeeded run remembered by ``remember`` within the last ``SERVED_RUN_TTL_S``."""
        hit = self._runs.get(run_id)
        if hit is None:
            return None
        left = hit[0] - time.monotonic()
        if left < 0:
            return None
        if left < REFRESH_AHEAD_S and self.confirm is not None and run_id not in self._refreshing:
            self._refresh_in_background(run_id)
        return hit[1]

    def _refresh_in_background(self, run_id: str) -> None:
        with self._lock:
            if run_id in self._refreshing:
                return
            self._refreshing.add(run_id)
        name = "odeserve-run-refresh"
        threading.Thread(target=self._refresh, args=(run_id,), name=name, daemon=True).start()

    def _refresh(self, run_id: str) -> None:
        assert self.confirm is not None
        try:
            run = self.confirm(run_id)
        except Exception:  # the run expires as it would have; the next query reports the failure
            log.warning("could not read run %s again; it is served until its TTL ends", run_id, exc_info=True)
            return
        finally:
            with self._lock:
                self._refreshing.discard(run_id)
        if run is None:
            self.discard(run_id)
        else:
            self.remember(run)

    def remember(self, run: ServedRun) -> None:
        with self._lock:
            if len(self._runs) > 4 * self.capacity:  # drop expired ones; the map stays small
                now = time.monotonic()
                self._runs = {k: v for k, v in self._runs.items() if v[0] >= now}
            self._runs[run.id] = (time.monotonic() + SERVED_RUN_TTL_S, run)

    def get(self, run_id: str, digest: str) -> CachedModel:
        """The model of ``run_id``; raises CheckpointError when its checkpoint fails verification."""
        key = (run_id, digest)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        return self._loading.do(key, lambda: self._load(run_id, digest))

    def _load(self, run_id: str, digest: str) -> CachedModel:
        key = (run_id, digest)
        with self._lock:  # a load that finished just before this flight began
            if (entry := self._entries.get(key)) is not None:
                return entry
        directory = self.store.checkpoint_dir(run_id, digest)  # fetched from an object store if needed
        loaded = load_checkpoint(directory, expected_digest=digest)
        entry = CachedModel(model=loaded.model, digest=digest, policy=self.policy, on_pass=self.on_pass)
        with self._lock:
            entry = self._entries.setdefault(key, entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return entry

    def loaded(self, run_id: str, digest: str) -> CachedModel | None:
        """The entry if it is in memory (no loading: safe on the event loop), else None."""
        with self._lock:
            entry = self._entries.get((run_id, digest))
            if entry is not None:
                self._entries.move_to_end((run_id, digest))
            return entry

    def discard(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
            for key in [k for k in self._entries if k[0] == run_id]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

"""Dynamic batching of queries on one loaded model: concurrent density requests share a solve.

Density requests for the same model that wait at the same time are merged: their points are
concatenated (at most ``max_points`` per pass; a larger request runs alone), one ``log_prob`` runs
under ``torch.no_grad`` and each request gets its slice. While requests overlap, a request waits at
most ``max_wait_s`` after arriving for companions (a lone client never waits: the wait is skipped
unless the previous pass was contended, or when a companion of its size would not fit); meanwhile
the pass that is running gathers the next batch.

One solver thread per model runs the passes; it starts on the first request and exits after
``IDLE_EXIT_S`` without work, so a model that leaves the cache leaves no thread behind. Callers wait
on a future: ``log_prob``/``sample`` block a thread, ``log_prob_async``/``sample_async`` await on the
event loop without holding a threadpool thread.

Small density requests from the event loop (at most ``inline_max_points`` points, the API's common
1-point query) are solved on the event loop itself: the requests that arrive in one loop iteration
are merged into one pass that runs right after it, while the next requests wait in socket buffers.
When the last pass had company, a pass waits up to ``max_wait_s`` for as many requests as there were
distinct clients (``client``: the caller's connection) in the last two passes. Counting clients over
two passes, not requests in the last one, keeps closed-loop clients in one group: with the last
pass's size as the goal, 16 clients settled into two alternating passes of 8 (measured), each paying
the solve's fixed cost, since the clients of one pass come back only after it is answered.
A solve handed to another thread in the same process pays for it in GIL handoffs: torch releases the
GIL around every op, and each reacquisition can wait for the busy event loop's switch interval
(measured A/B: 15-67% more 1-point requests/s at 4 and 16 clients on the loop). A pass on the loop is bounded:
few points, and at most ``inline_max_steps`` solver steps; a pass that needs more is abandoned and
its requests go to the solver thread, as do all later small requests on that model (its solves are
long: they would freeze every other request). When the solver thread holds the model the requests
go to it too.

Every served solve uses the model's ``query_solver``: the run's solver with tolerances no tighter
than ``rtol_floor``/``atol_floor`` and at most ``max_num_steps`` steps (a run trained at 1e-12 with
100 000 steps would otherwise answer one density query in seconds to minutes).

Semantics the callers rely on:

* Adaptive dopri5 picks one step sequence for the whole batch (torchdiffeq's RMS error norm), so a
  merged point's log-density can differ from its value in a solve of its own by solver-tolerance
  amounts, exactly as a point's value already depends on the other points of its request.
* Samples keep "same seed, same samples": each sample request is drawn with its own seeded generator
  and integrated on its own (queued in order with the density passes). Merging the noise of several
  requests into one solve would make each request's samples depend on its neighbours through the
  shared adaptive steps. Sample requests are large (``n`` defaults to 1000), so a solve of their own
  already runs at an efficient batch size.
* Errors never poison a batch: when a merged pass fails (``SolverError`` on an extreme point, ...)
  each of its requests is run alone, so every request gets exactly the answer it would get alone.
* Nothing hangs: a request not answered within ``timeout_s`` raises :class:`BatchTimeout`.
* Peak memory is bounded: a pass whose estimate (``model.query_bytes_per_item``) is over
  ``max_pass_bytes`` runs as consecutive model calls on chunks of that many points or samples (the
  chunk sizes depend only on the request, so the same seed still gives the same samples; see
  :mod:`service.serving.batch_passes`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from service.ml.errors import SolverError
from service.ml.models import DensityModel
from service.ml.ode import SolverConfig
from service.serving.batch_passes import ChunkedCalls, Outcome, over_budget, settle
from service.serving.batch_policy import BatchPolicy, BatchTimeout

__all__ = ["IDLE_EXIT_S", "BatchPolicy", "BatchTimeout", "Batcher"]

IDLE_EXIT_S = 30.0


@dataclass(eq=False)
class _Request:
    kind: Literal["density", "sample"]
    size: int
    points: Tensor | None = None
    seed: int = 0
    client: Hashable | None = None  # who asked (a connection): counts the clients in a pass
    arrived: float = field(default_factory=time.monotonic)
    future: Future[Tensor] = field(init=False)  # set when queued for the solver thread


class Batcher:
    """Merges concurrent ``log_prob`` requests on ``model``; ``lock`` guards every model call."""

    def __init__(
        self,
        model: DensityModel,
        lock: threading.Lock | None = None,
        policy: BatchPolicy | None = None,
        on_pass: Callable[[int], None] | None = None,
    ) -> None:
        """``on_pass(n)``: called after each pass with its request count ``n`` (for metrics)."""
        self.model = model
        self.policy = policy or BatchPolicy()
        self._on_pass = on_pass
        self._model_lock = lock or threading.Lock()
        self._cv = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._thread: threading.Thread | None = None
        self._idle = False  # the solver thread is waiting for work
        self._contended = False  # the last batch had company: worth waiting for more
        self.forward_passes = 0  # model calls made (a merged batch counts once)
        self.requests = 0  # requests answered
        self._inline: list[tuple[_Request, asyncio.Future[Tensor | None]]] = []  # loop-side queue
        self._inline_points = 0
        self._inline_expect = 1  # clients of the last two loop passes: under load, wait for as many
        self._last_clients: set[Hashable] = set()
        self._inline_timer: asyncio.Handle | asyncio.TimerHandle | None = None
        self._loop: tuple[int, asyncio.AbstractEventLoop] | None = None  # (thread id, its running loop)
        self._calls = ChunkedCalls(model, lambda: self.policy.max_pass_bytes)  # memory budget
        self._inline_solver = self._bound_solver()
        self._inline_heavy = False  # a loop pass ran past inline_max_steps: solve on the thread only

    def _bound_solver(self) -> SolverConfig | None:
        """Give the model its serving solver (the policy's floors and step budget); returns the
        tighter budget of passes on the event loop (None: a model without a solver, in tests)."""
        solver: SolverConfig | None = getattr(self.model, "solver", None)
        if solver is None:
            return None
        policy = self.policy
        served = solver.bounded(policy.rtol_floor, policy.atol_floor, policy.max_num_steps)
        self.model.query_solver = served
        return served.model_copy(update={"max_num_steps": min(served.max_num_steps, policy.inline_max_steps)})

    # -- request side -------------------------------------------------------------------------

    def log_prob(self, points: Tensor) -> Tensor:
        """Log-density of ``points`` ``(N, D)`` -> ``(N,)``, possibly computed in a merged pass."""
        return self._wait(self._submit(self._density(points)))

    def sample(self, n: int, seed: int) -> Tensor:
        """``n`` samples ``(n, D)`` from a generator seeded with ``seed`` (solved on their own)."""
        return self._wait(self._submit(_Request("sample", n, seed=seed)))

    async def log_prob_async(self, points: Tensor, client: Hashable | None = None) -> Tensor:
        """``log_prob`` for the event loop: awaits the pass instead of blocking a thread.

        ``client`` identifies the caller (its connection) across requests; None: a new one each time.
        """
        req = self._density(points, client)
        if req.size <= self.policy.inline_max_points and not self._inline_heavy:
            result = await self._inline_pass(req)
            if result is not None:
                return result
        return await self._await(self._submit(req))

    async def sample_async(self, n: int, seed: int) -> Tensor:
        return await self._await(self._submit(_Request("sample", n, seed=seed)))

    def _density(self, points: Tensor, client: Hashable | None = None) -> _Request:
        if points.dim() != 2 or points.shape[1] != self.model.dim or points.shape[0] < 1:
            raise ValueError(f"points must be (N >= 1, {self.model.dim}), got {tuple(points.shape)}")
        return _Request("density", int(points.shape[0]), points=points, client=client)

    def _submit(self, req: _Request) -> Future[Tensor]:
        req.future = Future()
        with self._cv:
            self._pending.append(req)
            if self._thread is None:
                self._start()
            elif self._idle or self._queued_points() >= self.policy.max_points:
                self._cv.notify()  # wake the idle solver, or one waiting for a batch that is now full
        return req.future

    def _start(self) -> None:
        """Start the solver thread; the caller holds ``_cv``."""
        self._thread = threading.Thread(target=self._serve, name="odeserve-batcher", daemon=True)
        self._thread.start()

    def _wait(self, future: Future[Tensor]) -> Tensor:
        try:
            return future.result(timeout=self.policy.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise self._timeout() from None

    async def _await(self, future: Future[Tensor]) -> Tensor:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.policy.timeout_s)
        except TimeoutError:
            future.cancel()  # skipped by the solver if it has not started on it yet
            raise self._timeout() from None

    def _timeout(self) -> BatchTimeout:
        seconds = self.policy.timeout_s
        return BatchTimeout(f"no answer within {seconds:g}s: the model is busy with other requests")

    # -- passes on the event loop ---------------------------------------------------------------

    def _inline_pass(self, req: _Request) -> asyncio.Future[Tensor | None]:
        """Queue ``req`` for the loop's next pass; the future gives None to hand it to the thread."""
        loop = self._running_loop()
        future: asyncio.Future[Tensor | None] = loop.create_future()
        if self._inline_points + req.size > min(self.policy.inline_max_points, self.policy.max_points):
            self._flush_inline()  # full: this pass runs now, ``req`` opens the next one
        if not self._inline:
            if self._inline_expect > 1:  # the last pass had company: give its clients max_wait_s
                self._inline_timer = loop.call_later(self.policy.max_wait_s, self._flush_inline)
            else:  # after the callbacks (requests) already ready
                self._inline_timer = loop.call_soon(self._flush_inline)
        self._inline.append((req, future))
        self._inline_points += req.size
        if len(self._inline) >= self._inline_expect > 1:  # as many as last time: go now
            self._inline_timer.cancel()
            self._inline_timer = loop.call_soon(self._flush_inline)
        return future

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """``asyncio.get_running_loop()`` without its per-call ``getpid()`` system call.

        A thread runs at most one loop at a time, so the loop last seen running on this thread, if it
        is running now, is the running one.
        """
        thread = threading.get_ident()
        cached = self._loop
        if cached is not None and cached[0] == thread and cached[1].is_running():
            return cached[1]
        loop = asyncio.get_running_loop()
        self._loop = (thread, loop)
        return loop

    def _flush_inline(self) -> None:
        if self._inline_timer is not None:
            self._inline_timer.cancel()
        batch = [(req, future) for req, future in self._inline if not future.done()]  # not cancelled
        self._inline, self._inline_points = [], 0
        clients = {id(req) if req.client is None else req.client for req, _ in batch}
        self._inline_expect = len(clients | self._last_clients) if len(clients) > 1 else 1
        self._last_clients = clients
        if not batch:
            return
        if not self._model_lock.acquire(blocking=False):  # the solver thread is in a pass
            for _, future in batch:
                future.set_result(None)
            return
        served = getattr(self.model, "query_solver", None)
        try:
            if served is not None:
                # object.__setattr__: nn.Module's costs ~1.4 us, twice per loop pass.
                object.__setattr__(self.model, "query_solver", self._inline_solver)
            outcomes = self._inline_outcomes([req for req, _ in batch])
        finally:
            if served is not None:
                object.__setattr__(self.model, "query_solver", served)
            self._model_lock.release()
        if outcomes is None:  # past the loop's step budget: the solver thread takes them all
            self._inline_heavy = True
            for _, future in batch:
                future.set_result(None)
            return
        settle([future for _, future in batch], outcomes)
        self._answered(len(batch))

    def _inline_outcomes(self, batch: list[_Request]) -> list[Outcome] | None:
        """One merged pass on the loop; None when it ran past ``inline_max_steps`` (a long solve
        leaves the loop); other failures are isolated as in ``_outcomes``."""
        try:
            points = batch[0].points if len(batch) == 1 else torch.cat([r.points for r in batch])
            values = self._call(lambda: self._calls.log_prob(points))
        except SolverError as error:
            if over_budget(error):
                return None
            isolated = [self._alone(r) for r in batch] if len(batch) > 1 else [(None, error)]
        except Exception as error:
            isolated = [self._alone(r) for r in batch] if len(batch) > 1 else [(None, error)]
        else:
            return [(v, None) for v in values.split([r.size for r in batch])]
        over = any(over_budget(error) for _, error in isolated)
        return None if over else isolated

    # -- solver thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while (batch := self._collect()) is not None:
                self._run(batch)
        finally:
            with self._cv:
                if self._thread is threading.current_thread():  # died abnormally: hand over
                    self._thread = None
                    if self._pending:
                        self._start()

    def _collect(self) -> list[_Request] | None:
        """The next batch; None (and the thread is forgotten) after ``IDLE_EXIT_S`` without work."""
        policy = self.policy
        with self._cv:
            while not self._pending:
                self._idle = True
                woke = self._cv.wait(IDLE_EXIT_S)
                self._idle = False
                if not woke and not self._pending:
                    self._thread = None
                    return None
            first = self._pending[0]
            if first.kind == "density" and self._contended:
                deadline = first.arrived + policy.max_wait_s
                # Wait only while a companion the size of the first request would still fit.
                while self._queued_points() + first.size <= policy.max_points:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cv.wait(remaining)
            batch = self._take()
            self._contended = len(batch) > 1 or bool(self._pending)
        # Requests whose callers gave up (timed out) are dropped here, before any work is done.
        return [r for r in batch if r.future.set_running_or_notify_cancel()]

    def _take(self) -> list[_Request]:
        """The oldest request, plus (for density) every queued density request that still fits."""
        first = self._pending.popleft()
        if first.kind != "density":
            return [first]
        batch, total, rest = [first], first.size, deque()
        for req in self._pending:
            if req.kind == "density" and total + req.size <= self.policy.max_points:
                batch.append(req)
                total += req.size
            else:
                rest.append(req)
        self._pending = rest
        return batch

    def _queued_points(self) -> int:
        return sum(r.size for r in self._pending if r.kind == "density")

    def _run(self, batch: list[_Request]) -> None:
        outcomes: list[Outcome] = []
        try:
            with self._model_lock:
                outcomes = self._outcomes(batch)
        finally:
            outcomes += [(None, RuntimeError("batch aborted"))] * (len(batch) - len(outcomes))
            settle([req.future for req in batch], outcomes)
            self._answered(len(batch))

    def _answered(self, count: int) -> None:
        self.requests += count
        if self._on_pass is not None and count:
            self._on_pass(count)

    def _outcomes(self, batch: list[_Request]) -> list[Outcome]:
        """Each request's ``(result, error)``: one merged pass, or (if it fails) one pass each.

        The caller holds the model lock."""
        if len(batch) > 1:
            try:
                values = self._call(lambda: self._calls.log_prob(torch.cat([r.points for r in batch])))
                return [(v, None) for v in values.split([r.size for r in batch])]
            except Exception:
                pass  # isolate the failure: every request gets its own answer
        return [self._alone(r) for r in batch]

    def _alone(self, req: _Request) -> Outcome:
        try:
            if req.kind == "sample":
                return self._call(lambda: self._calls.sample(req.size, req.seed)), None
            return self._call(lambda: self._calls.log_prob(req.points)), None
        except Exception as error:
            return None, error

    def _chunk(self, kind: str) -> int:
        """Points (or samples) per model call within ``max_pass_bytes``."""
        return self._calls.chunk(kind)

    def _call(self, fn: Callable[[], Tensor]) -> Tensor:
        with torch.no_grad():
            self.forward_passes += 1
            return fn()

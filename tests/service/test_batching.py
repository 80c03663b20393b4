"""Dynamic batching: merged passes give the unbatched answers, bad requests stay isolated.

Unit tests drive ``Batcher`` from threads on a small FFJORD in float64 at tight tolerances, where
a point's log-density no longer depends on the batch it was solved in beyond 1e-5 (at the serving
default 1e-3 the shared adaptive steps move it by solver-tolerance amounts, see service.serving.batching).
API tests hit the real routes concurrently on the run trained by the worker code.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from service.ml.errors import SolverError
from service.ml.models import build_model
from service.ml.ode import SolverConfig
from service.serving.batching import Batcher, BatchPolicy, BatchTimeout

TIGHT = SolverConfig(method="dopri5", rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    flow = build_model("ffjord", {"hidden_dims": [16]}, 2, TIGHT).double()
    with torch.no_grad():  # a non-trivial flow (the last layer starts near zero)
        last = flow.dynamics.net.layers[-1].linear
        last.weight.normal_(0, 0.5)
        last.bias.normal_(0, 0.2)
    return flow


def _points(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _concurrently(fn: Any, args: list[Any]) -> list[Any]:
    """Call ``fn`` on every arg from its own thread, all released at once."""
    barrier = threading.Barrier(len(args))

    def call(arg: Any) -> Any:
        barrier.wait()
        try:
            return fn(arg)
        except Exception as error:  # returned, so the test can check which requests failed
            return error

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(call, args))


def test_concurrent_requests_merge_and_match_unbatched_calls(model):
    requests = [_points(1 + i % 3, seed=i) for i in range(12)]
    with torch.no_grad():
        expected = [model.log_prob(x) for x in requests]
    # A long wait window makes the merge deterministic even on a loaded machine.
    batcher = Batcher(model, policy=BatchPolicy(max_points=1024, max_wait_s=0.2))
    batcher._contended = True
    got = _concurrently(batcher.log_prob, requests)
    for value, want in zip(got, expected, strict=True):
        assert torch.allclose(value, want, atol=1e-5, rtol=0), (value, want)
    assert batcher.requests == 12
    assert batcher.forward_passes < 12  # merged: fewer passes than requests


def test_lone_requests_do_not_wait_and_run_one_pass_each(model):
    batcher = Batcher(model, policy=BatchPolicy(max_wait_s=5.0))
    start = time.monotonic()
    for i in range(3):
        batcher.log_prob(_points(2, seed=i))
    assert time.monotonic() - start < 5.0  # no contention: the wait window is skipped
    assert batcher.forward_passes == 3


def test_max_points_bounds_a_pass(model):
    batcher = Batcher(model, policy=BatchPolicy(max_points=4, max_wait_s=0.2))
    batcher._contended = True
    got = _concurrently(batcher.log_prob, [_points(3, seed=i) for i in range(4)])
    assert [v.shape for v in got] == [torch.Size([3])] * 4
    assert batcher.forward_passes == 4  # 3 + 3 > 4: no two of them fit in one pass


class FailsOnSentinel(torch.nn.Module):
    """The model, but any pass containing the point (999, 999) fails like a blown-up solve."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model, self.dim = model, model.dim

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if (x == 999).all(dim=1).any():
            raise SolverError("the ODE state became non-finite", fix="test", field="solver")
        return self.model.log_prob(x)


def test_a_failing_request_does_not_poison_its_batch(model):
    good = [_points(2, seed=i) for i in range(5)]
    bad = torch.full((1, 2), 999.0, dtype=torch.float64)
    with torch.no_grad():
        expected = [model.log_prob(x) for x in good]
    batcher = Batcher(FailsOnSentinel(model), policy=BatchPolicy(max_wait_s=0.3))
    batcher._contended = True
    got = _concurrently(batcher.log_prob, [*good[:2], bad, *good[2:]])
    assert isinstance(got[2], SolverError)
    for value, want in zip(got[:2] + got[3:], expected, strict=True):
        assert torch.allclose(value, want, atol=1e-5, rtol=0)
    assert batcher.forward_passes > 6  # the merged pass failed, then each request ran alone


def test_wrong_shape_is_refused_at_submit(model):
    batcher = Batcher(model)
    with pytest.raises(ValueError, match="points must be"):
        batcher.log_prob(torch.zeros(2, 3, dtype=torch.float64))
    assert batcher.forward_passes == 0


def test_samples_are_reproducible_per_seed_under_concurrency(model):
    batcher = Batcher(model, policy=BatchPolicy(max_wait_s=0.05))
    seeds = [3, 7, 3, 11, 7, 3]
    got = _concurrently(lambda s: batcher.sample(5, s), seeds)
    with torch.no_grad():
        alone = {s: model.sample(5, torch.Generator().manual_seed(s)) for s in set(seeds)}
    for seed, value in zip(seeds, got, strict=True):
        assert torch.equal(value, alone[seed])


def test_a_request_never_hangs(model):
    batcher = Batcher(model, policy=BatchPolicy(timeout_s=0.05))
    with batcher._model_lock:  # the model is busy elsewhere
        with pytest.raises(BatchTimeout):
            batcher.log_prob(_points(1, seed=0))
        with pytest.raises(BatchTimeout):
            asyncio.run(batcher.log_prob_async(_points(1, seed=1)))
    batcher.policy = BatchPolicy(timeout_s=30)
    assert batcher.log_prob(_points(1, seed=2)).shape == (1,)  # and it recovers


def test_async_callers_share_passes(model):
    batcher = Batcher(model, policy=BatchPolicy(max_wait_s=0.2))
    batcher._contended = True
    requests = [_points(1, seed=i) for i in range(8)]

    async def main() -> list[torch.Tensor]:
        return await asyncio.gather(*(batcher.log_prob_async(x) for x in requests))

    got = asyncio.run(main())
    with torch.no_grad():
        for value, x in zip(got, requests, strict=True):
            assert torch.allclose(value, model.log_prob(x), atol=1e-5, rtol=0)
    assert batcher.forward_passes < 8


def _gather(batcher: Batcher, requests: list[torch.Tensor], cancel: int | None = None) -> list[Any]:
    """Submit ``requests`` from one event loop iteration; optionally cancel one before its pass."""

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(batcher.log_prob_async(x)) for x in requests]
        if cancel is not None:
            await asyncio.sleep(0)  # every task has queued its request; the pass has not run
            tasks[cancel].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(main())


def test_small_loop_requests_merge_into_one_pass_on_the_loop(model):
    batcher = Batcher(model)
    requests = [_points(1 + i % 2, seed=i) for i in range(8)]
    got = _gather(batcher, requests)
    with torch.no_grad():
        for value, x in zip(got, requests, strict=True):
            assert torch.allclose(value, model.log_prob(x), atol=1e-5, rtol=0)
    assert batcher.forward_passes == 1
    assert batcher.requests == 8
    assert batcher._thread is None  # solved on the loop: no solver thread was needed


def test_loop_passes_hold_at_most_inline_max_points_and_larger_requests_go_to_the_thread(model):
    batcher = Batcher(model, policy=BatchPolicy(inline_max_points=4))
    got = _gather(batcher, [_points(2, seed=i) for i in range(5)])
    assert [v.shape for v in got] == [torch.Size([2])] * 5
    assert batcher.forward_passes == 3  # 2+2, 2+2, 2
    assert batcher._thread is None
    (big,) = _gather(batcher, [_points(5, seed=9)])
    assert big.shape == (5,)
    assert batcher._thread is not None  # 5 > 4 points: solved by the solver thread


def test_loop_passes_use_the_loop_running_now(model):
    # The batcher remembers the loop it last saw on a thread (asyncio.get_running_loop makes a
    # system call each time); a new loop on the same thread, or loops on two threads at once, must
    # each get their own futures.
    batcher = Batcher(model)

    async def on_this_loop(seed: int) -> bool:
        value = await batcher.log_prob_async(_points(1, seed))
        return value.shape == (1,) and batcher._running_loop() is asyncio.get_running_loop()

    assert asyncio.run(on_this_loop(0)) and asyncio.run(on_this_loop(1))  # one thread, two loops
    both = threading.Barrier(2)

    def in_a_thread(seed: int) -> bool:
        async def main() -> bool:
            both.wait()  # both loops are running now
            return all([await on_this_loop(seed + i) for i in range(3)])

        return asyncio.run(main())

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(in_a_thread, [10, 20])) == [True, True]


def test_loop_passes_respect_max_points_too(model):
    batcher = Batcher(model, policy=BatchPolicy(max_points=1))  # batching off
    _gather(batcher, [_points(1, seed=i) for i in range(3)])
    assert batcher.forward_passes == 3


def test_a_failing_loop_request_does_not_poison_its_pass(model):
    good = [_points(2, seed=i) for i in range(4)]
    bad = torch.full((1, 2), 999.0, dtype=torch.float64)
    batcher = Batcher(FailsOnSentinel(model))
    got = _gather(batcher, [good[0], bad, *good[1:]])
    assert isinstance(got[1], SolverError)
    with torch.no_grad():
        for value, x in zip([got[0], *got[2:]], good, strict=True):
            assert torch.allclose(value, model.log_prob(x), atol=1e-5, rtol=0)
    assert batcher.forward_passes == 1 + 5  # the merged pass, then each request alone


def test_loop_requests_go_to_the_thread_while_it_holds_the_model(model):
    batcher = Batcher(model)
    release = threading.Timer(0.3, batcher._model_lock.release)
    batcher._model_lock.acquire()  # a pass on another thread
    release.start()
    got = _gather(batcher, [_points(1, seed=i) for i in range(3)])
    assert [v.shape for v in got] == [torch.Size([1])] * 3
    assert batcher._thread is not None  # handed over rather than blocking the loop on the lock


def test_loop_passes_wait_for_the_clients_of_the_last_two_passes(model):
    """Closed-loop clients answered in two alternating groups are merged back into one pass."""
    passes: list[int] = []
    batcher = Batcher(model, policy=BatchPolicy(max_wait_s=0.5), on_pass=passes.append)

    async def ask(client: str, seed: int, delay: float = 0.0) -> torch.Tensor:
        await asyncio.sleep(delay)
        return await batcher.log_prob_async(_points(1, seed=seed), client)

    async def timed(*calls: Any) -> float:
        began = time.monotonic()
        await asyncio.gather(*calls)
        return time.monotonic() - began

    async def main() -> list[float]:
        await asyncio.gather(ask("a", 0), ask("b", 1))  # one pass of 2 clients
        await asyncio.gather(ask("c", 2), ask("d", 3))  # then another group of 2
        # a and b come first; the pass waits (at most 0.5 s) for c and d, who arrive 50 ms later,
        # and goes as soon as all four are there.
        merged = await timed(ask("a", 4), ask("b", 5), ask("c", 6, delay=0.05), ask("d", 7, delay=0.05))
        waited = await timed(ask("a", 8))  # b, c and d are gone: a waits the 0.5 s once
        alone = await timed(ask("a", 9))  # a lone client is not delayed
        return [merged, waited, alone]

    merged, waited, alone = asyncio.run(main())
    assert passes == [2, 2, 4, 1, 1]
    assert merged < waited and waited >= 0.5 and alone < 0.5  # the merged pass did not time out


def test_a_contended_thread_pass_waits_only_while_a_companion_of_its_size_fits(model):
    batcher = Batcher(model, policy=BatchPolicy(max_points=10, max_wait_s=0.3, inline_max_points=0))

    def timed_contended_call(n: int) -> float:
        batcher._contended = True  # as after a merged pass
        began = time.monotonic()
        batcher.log_prob(_points(n, seed=n))
        return time.monotonic() - began

    assert timed_contended_call(4) >= 0.3  # 4 + 4 <= 10: worth waiting for
    assert timed_contended_call(6) < 0.3  # 6 + 6 > 10: no companion like it could join


def test_a_lone_loop_client_never_waits(model):
    batcher = Batcher(model, policy=BatchPolicy(max_wait_s=5.0))

    async def main() -> float:
        began = time.monotonic()
        for seed in range(3):
            await batcher.log_prob_async(_points(1, seed=seed), "a")
        return time.monotonic() - began

    assert asyncio.run(main()) < 2.0
    assert batcher.forward_passes == 3


def test_a_cancelled_loop_request_is_skipped(model):
    batcher = Batcher(model)
    got = _gather(batcher, [_points(1, seed=i) for i in range(4)], cancel=2)
    assert isinstance(got[2], asyncio.CancelledError)
    assert [v.shape for i, v in enumerate(got) if i != 2] == [torch.Size([1])] * 3
    assert batcher.requests == 3 and batcher.forward_passes == 1


# -- through the API --------------------------------------------------------------------------


def test_concurrent_density_requests_match_single_calls(client, trained_run):
    run_id = trained_run["id"]
    xs = [f"{0.3 * i - 1:.2f},{0.5 - 0.2 * i:.2f}" for i in range(10)]
    single = [client.get("/density", params={"run_id": run_id, "x": x}).json()["log_density"][0] for x in xs]
    got = _concurrently(lambda x: client.get("/density", params={"run_id": run_id, "x": x}), xs)
    assert all(r.status_code == 200 for r in got), [r.text for r in got]
    values = [r.json()["log_density"][0] for r in got]
    # This run's solver is dopri5 at rtol=atol=1e-3; a merged pass shares its adaptive steps.
    assert values == pytest.approx(single, abs=5e-3)


def test_bad_requests_in_the_same_window_do_not_poison_others(client, trained_run, problem):
    run_id = trained_run["id"]
    queries = [{"x": "0.1,0.2"}, {"x": "1,2,3"}, {"x": "0.5,-0.5"}, {"x": "nan,1"}, {"x": "-1,1"}]
    got = _concurrently(lambda q: client.get("/density", params={"run_id": run_id, **q}), queries)
    assert [r.status_code for r in got] == [200, 422, 200, 422, 200]
    problem(got[1], 422, "x")
    for query, response in zip(queries, got, strict=True):
        if response.status_code == 200:
            alone = client.get("/density", params={"run_id": run_id, **query}).json()["log_density"]
            assert response.json()["log_density"] == pytest.approx(alone, abs=5e-3)


def test_concurrent_samples_keep_their_seeds(client, trained_run):
    run_id = trained_run["id"]
    seeds = [1, 2, 1, 3, 2, 1]
    got = _concurrently(lambda s: client.get("/sample", params={"run_id": run_id, "n": 7, "seed": s}), seeds)
    samples = [r.json()["samples"] for r in got]
    for seed, value in zip(seeds, samples, strict=True):
        assert value == samples[seeds.index(seed)]
    assert client.get("/sample", params={"run_id": run_id, "n": 7, "seed": 1}).json()["samples"] == samples[0]

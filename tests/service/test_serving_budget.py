"""Serving's own solver budget: tolerance floors and a step cap whatever the run trained at, and a
long solve leaves the event loop, so ``/livez`` answers while it runs."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.ml.models import build_model
from service.ml.ode import SolverConfig
from service.serving.batching import Batcher, BatchPolicy

STIFF = SolverConfig(method="dopri5", rtol=1e-12, atol=1e-12, max_num_steps=100_000)


@pytest.fixture
def stiff_flow() -> Any:
    torch.manual_seed(0)
    return build_model("ffjord", {"hidden_dims": [16]}, 2, STIFF).double()


def test_served_solves_are_bounded_whatever_the_run_trained_at(stiff_flow):
    Batcher(stiff_flow, policy=BatchPolicy(rtol_floor=1e-6, atol_floor=1e-7, max_num_steps=500))
    served = stiff_flow.query_solver
    assert (served.rtol, served.atol, served.max_num_steps) == (1e-6, 1e-7, 500)
    assert stiff_flow.solver == STIFF  # what the run trained with (and its checkpoint) is unchanged
    with torch.no_grad():
        stiff_flow.log_prob(torch.zeros(1, 2, dtype=torch.float64))
    bounded_nfe = stiff_flow.nfe.forward
    stiff_flow.query_solver = None
    with torch.no_grad():
        stiff_flow.log_prob(torch.zeros(1, 2, dtype=torch.float64))
    assert bounded_nfe < stiff_flow.nfe.forward  # the run's own 1e-12 costs more


def test_a_loop_pass_past_its_step_budget_moves_to_the_solver_thread(stiff_flow):
    batcher = Batcher(stiff_flow, policy=BatchPolicy(inline_max_steps=1))
    threads: list[int] = []
    solve = stiff_flow.log_prob

    def spy(x: torch.Tensor) -> torch.Tensor:
        threads.append(threading.get_ident())
        return solve(x)

    stiff_flow.log_prob = spy
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64)

    async def query() -> tuple[torch.Tensor, int]:
        return await batcher.log_prob_async(x), threading.get_ident()

    try:
        value, loop = asyncio.run(query())
        first = list(threads)
        threads.clear()
        again, _ = asyncio.run(query())
    finally:
        del stiff_flow.log_prob
    assert first[0] == loop and first[1:] and all(t != loop for t in first[1:])  # tried, then left
    assert threads and all(t != loop for t in threads)  # later small queries skip the loop
    with torch.no_grad():
        torch.testing.assert_close(value, stiff_flow.log_prob(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(again, value, atol=1e-6, rtol=0)


def test_livez_answers_while_a_long_density_query_runs(settings, sessions, queue, trained_run):
    """The model's solve, once off the loop, blocks until /livez has answered: on the loop it would
    have had to finish first (and the solve would never be seen off the loop)."""
    app = create_app(
        settings.model_copy(update={"batch_inline_max_steps": 1}), session_factory=sessions, dispatcher=queue
    )
    run_id = trained_run["id"]
    started, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            params = {"run_id": run_id, "x": "0.5,0.5"}
            assert (await http.get("/density", params=params)).status_code == 200  # loads the model
            cache = app.state.model_cache
            dynamics = cache.loaded(run_id, cache.recall(run_id).checkpoint_sha256).model.dynamics
            field = dynamics.forward

            def slow(t: Any, state: Any) -> Any:
                if threading.get_ident() != loop_thread and not started.is_set():
                    started.set()
                    outcome["released"] = release.wait(30)
                return field(t, state)

            dynamics.forward = slow
            try:
                query = asyncio.create_task(http.get("/density", params=params))
                outcome["began_off_loop"] = await asyncio.to_thread(started.wait, 10)
                outcome["livez"] = (await http.get("/livez")).status_code
                outcome["query_done_before_livez"] = query.done()
                release.set()
                outcome["answer"] = await query
            finally:
                release.set()
                del dynamics.forward

    asyncio.run(scenario())
    assert outcome["began_off_loop"], "the query's solve never left the event loop"
    assert outcome["livez"] == 200 and not outcome["query_done_before_livez"]
    assert outcome["released"] and outcome["answer"].status_code == 200
    assert len(outcome["answer"].json()["log_density"]) == 1


def test_a_query_past_the_serving_step_budget_names_it(settings, sessions, queue, trained_run, problem):
    budget = {"serve_max_num_steps": 1, "batch_inline_max_steps": 1}
    app = create_app(settings.model_copy(update=budget), session_factory=sessions, dispatcher=queue)
    with TestClient(app) as client:
        response = client.get("/density", params={"run_id": trained_run["id"], "x": "0.5,0.5"})
        body = problem(response, 422, "x")
        assert "ODESERVE_SERVE_MAX_NUM_STEPS" in body["detail"], body
        sample = client.get("/sample", params={"run_id": trained_run["id"], "n": 3})
        assert "ODESERVE_SERVE_MAX_NUM_STEPS" in problem(sample, 422, "n")["detail"]

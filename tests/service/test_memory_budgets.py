"""Compute and memory budgets: a training step estimated over ``ODESERVE_TRAIN_MEMORY_BYTES`` is a
422 naming the estimate, the budget and the batch size that fits; queries larger than
``ODESERVE_QUERY_MEMORY_BYTES`` run in chunks (the same answer, a bounded peak)."""

from __future__ import annotations

import math

import pytest
import torch

from service.ml.errors import ConfigError, DataError
from service.ml.memory import check_training_memory, evaluations_kept, greedy_chunks
from service.ml.models import build_model
from service.ml.ode import SolverConfig
from service.schemas.series import PredictRequest, SeriesIn
from service.serving.batching import Batcher, BatchPolicy
from service.serving.model_cache import CachedModel
from service.serving.series_queries import predict, series_log_density

HUGE = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians"},
    "model_config": {"hidden_dims": [1024] * 8, "integration_time": 100},
    "training": {"iterations": 10, "batch_size": 65_536},
}


def test_a_training_step_over_the_budget_is_a_422_with_the_batch_that_fits(client, problem):
    response = client.post("/train", json=HUGE)
    body = problem(response, 422, "training.batch_size")
    detail = body["detail"]
    assert "memory budget of 8.0 GiB" in detail and "ODESERVE_TRAIN_MEMORY_BYTES" in detail, detail
    assert "reduce training.batch_size to <= " in detail and "solver.adjoint" in detail, detail


def test_the_batch_size_the_error_offers_is_accepted(client, queue, problem):
    detail = problem(client.post("/train", json=HUGE), 422)["detail"]
    fits = int(detail.split("reduce training.batch_size to <= ")[1].split(",")[0].split()[0])
    assert 1 <= fits < 65_536
    body = {**HUGE, "training": {**HUGE["training"], "batch_size": fits}}
    accepted = client.post("/train", json=body)
    assert accepted.status_code == 202, accepted.text
    queue.queued.remove(accepted.json()["id"])  # accepted, never to be trained here
    assert client.delete(accepted.headers["location"]).status_code == 204
    body["training"]["batch_size"] = fits + 1
    problem(client.post("/train", json=body), 422, "training.batch_size")


def test_a_sweep_combination_over_the_budget_names_its_grid_path(client, problem):
    base = {**HUGE, "training": {"iterations": 10, "batch_size": 64}}
    response = client.post("/sweeps", json={"base": base, "grid": {"training.batch_size": [8, 65_536]}})
    body = problem(response, 422, "grid.training.batch_size")
    assert "memory budget" in body["detail"], body


def test_default_requests_are_far_inside_the_budget():
    model = build_model("ffjord", None, 2)
    per_item = type(model).training_bytes_per_item(model.config, 2, model.solver)
    assert per_item is not None and per_item * 256 < 64 << 20  # the default batch: under 64 MiB


def test_adjoint_keeps_a_constant_number_of_evaluations():
    rk4 = SolverConfig(method="rk4", step_size=0.5)
    assert evaluations_kept(rk4, 2.0) == 16 and evaluations_kept(rk4, 100.0) == 800
    assert evaluations_kept(rk4.model_copy(update={"adjoint": True}), 100.0) == 2


def test_check_training_memory_names_the_largest_batch():
    assert check_training_memory(1000, 10, 10_000) == 10_000
    with pytest.raises(ConfigError, match=r"batch_size to <= 10\b") as info:
        check_training_memory(1000, 11, 10_000)
    assert info.value.field == "training.batch_size" and info.value.value == 11_000


def test_greedy_chunks_cover_everything_in_order_within_the_budget():
    lengths = [5, 1, 7, 3, 3, 9, 1]

    def cost(count: int, total: int, longest: int) -> int:
        return count * total

    chunks = greedy_chunks(lengths, cost, 30, what="series", field="series")
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
    for start, stop in chunks:
        assert cost(stop - start, sum(lengths[start:stop]), max(lengths[start:stop])) <= 30
    with pytest.raises(DataError) as info:
        greedy_chunks([2, 40], cost, 30, what="series", field="series")
    assert info.value.field == "series[1]"


TIGHT = SolverConfig(method="dopri5", rtol=1e-9, atol=1e-9)


class _Spy:
    """Wraps a model method and records the batch size of each call."""

    def __init__(self, fn, size) -> None:
        self.fn, self.size, self.sizes = fn, size, []

    def __call__(self, x, *args, **kwargs):
        self.sizes.append(self.size(x))
        return self.fn(x, *args, **kwargs)


@pytest.fixture
def flow():
    torch.manual_seed(0)
    return build_model("ffjord", {"hidden_dims": [16]}, 2, TIGHT).double()


def test_a_density_pass_over_the_budget_runs_in_chunks_with_the_same_answer(flow):
    points = torch.randn(35, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        whole = flow.log_prob(points)
    per_point = flow.query_bytes_per_item("density")
    batcher = Batcher(flow, policy=BatchPolicy(max_pass_bytes=10 * per_point))
    flow.log_prob = spy = _Spy(flow.log_prob, lambda x: x.shape[0])
    try:
        chunked = batcher.log_prob(points)
    finally:
        del flow.log_prob
    assert spy.sizes == [10, 10, 10, 5]
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


def test_a_sample_over_the_budget_runs_in_chunks_and_keeps_its_seed(flow):
    per_sample = flow.query_bytes_per_item("sample")
    batcher = Batcher(flow, policy=BatchPolicy(max_pass_bytes=8 * per_sample))
    flow.sample = spy = _Spy(flow.sample, lambda n: n)
    try:
        first, again = batcher.sample(20, seed=3), batcher.sample(20, seed=3)
    finally:
        del flow.sample
    assert spy.sizes == [8, 8, 4] * 2 and first.shape == (20, 2)
    torch.testing.assert_close(first, again, atol=0, rtol=0)


def test_a_wide_64d_model_serves_10000_points_in_chunks_within_the_default_budget():
    wide = build_model("ffjord", {"hidden_dims": [1024, 1024, 1024]}, 64)
    per_point = wide.query_bytes_per_item("density")
    assert per_point * 10_000 > 8 << 30  # one pass would be over 8 GiB
    chunk = Batcher(wide, policy=BatchPolicy())._chunk("density")
    assert 1 <= chunk < 10_000 and chunk * per_point <= 256 << 20


def _series(count: int, length: int) -> list[SeriesIn]:
    out = []
    for i in range(count):
        times = [0.01 * j + 1e-4 * i for j in range(length)]  # all distinct across series
        out.append(SeriesIn(times=times, values=[[math.sin(t)] for t in times]))
    return out


def test_series_density_is_scored_in_chunks_within_the_budget():
    torch.manual_seed(0)
    model = build_model("latent_ode", {"latent_dim": 3, "encoder_hidden": 8, "dynamics_hidden": [8],
                                       "decoder_hidden": [8], "iwae_samples": 4}, 1)  # fmt: skip
    entry = CachedModel(model, digest="test")
    series = _series(40, 30)
    budget = model.bound_bytes(8, 8 * 30, 30)
    model.log_prob = spy = _Spy(model.log_prob, len)
    try:
        bounds = series_log_density(entry, series, budget)
    finally:
        del model.log_prob
    assert len(bounds) == 40 and all(b is not None and math.isfinite(b) for b in bounds)
    assert sum(spy.sizes) == 40 and len(spy.sizes) == 5
    assert all(model.bound_bytes(n, n * 30, 30) <= budget for n in spy.sizes)
    assert model.bound_bytes(40, 40 * 30, 30) > 10 * budget  # one pass: the union grid is quadratic
    with pytest.raises(DataError) as info:
        series_log_density(entry, [*_series(2, 10), *_series(1, 4000)], budget)
    assert info.value.field == "series[2]" and "ODESERVE_QUERY_MEMORY_BYTES" in str(info.value)


def test_a_prediction_over_the_budget_names_the_n_samples_that_fits():
    torch.manual_seed(0)
    model = build_model("latent_ode", {"latent_dim": 128}, 1)
    entry = CachedModel(model, digest="test")
    times = [0.04 * i for i in range(100)]
    body = {
        "run_id": "00000000-0000-0000-0000-000000000000",
        "times": times,
        "values": [[math.sin(t)] for t in times],
        "predict_times": [0.004 * i for i in range(2000)],
        "n_samples": 256,
    }
    budget = 64 << 20
    with pytest.raises(DataError) as info:
        predict(entry, PredictRequest(**body), budget)
    assert info.value.field == "n_samples" and "ODESERVE_QUERY_MEMORY_BYTES" in str(info.value)
    fits = int(str(info.value).split("lower n_samples to <= ")[1].split(",")[0])
    assert 1 <= fits < 256 and model.predict_bytes(fits, 100, 2000) <= budget
    mean, std = predict(entry, PredictRequest(**{**body, "n_samples": fits}), budget)
    assert len(mean) == len(std) == 2000

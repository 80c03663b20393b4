"""What one pass of a :class:`~service.serving.batching.Batcher` does with its model and requests.

Model calls stay within the memory budget: a pass whose estimate (``model.query_bytes_per_item``)
is over ``max_pass_bytes`` runs as consecutive calls on chunks of that many points or samples, and
the chunk sizes depend only on the request, so the same seed still gives the same samples. Each
request then gets its :data:`Outcome`, on a thread or event-loop future alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future

import torch
from torch import Tensor

from service.ml.errors import SolverError
from service.ml.memory import chunk_size, split_sizes
from service.ml.models import DensityModel

__all__ = ["ChunkedCalls", "Outcome", "over_budget", "settle"]

Outcome = tuple[Tensor | None, BaseException | None]
"""A request's ``(result, error)``: exactly one of them is None."""


class ChunkedCalls:
    """``log_prob`` and ``sample`` of ``model`` in calls estimated at most ``max_pass_bytes()``.

    ``max_pass_bytes`` is read when a query kind is first sized (the batcher's current policy).
    """

    def __init__(self, model: DensityModel, max_pass_bytes: Callable[[], int]) -> None:
        self.model = model
        self.max_pass_bytes = max_pass_bytes
        self._chunks: dict[str, int] = {}  # items per model call by query kind

    def chunk(self, kind: str) -> int:
        """Points (or samples) per model call within the budget; DataError if one is over."""
        chunk = self._chunks.get(kind)
        if chunk is None:
            estimate = getattr(self.model, "query_bytes_per_item", None)  # duck-typed models: none
            per_item = estimate(kind) if estimate is not None else 0
            what = "point" if kind == "density" else "sample"
            field = "points" if kind == "density" else "n"
            budget = self.max_pass_bytes()
            chunk = chunk_size(per_item, budget, what=what, field=field) if per_item else 1 << 62
            self._chunks[kind] = chunk
        return chunk

    def log_prob(self, points: Tensor) -> Tensor:
        """``model.log_prob`` in chunks of ``chunk("density")`` points (peak memory bounded)."""
        chunk = self.chunk("density")
        if points.shape[0] <= chunk:
            return self.model.log_prob(points)
        return torch.cat([self.model.log_prob(part) for part in points.split(chunk)])

    def sample(self, n: int, seed: int) -> Tensor:
        """``n`` samples from one generator seeded ``seed``, drawn in chunks (sizes fixed by ``n``)."""
        generator = torch.Generator().manual_seed(seed)
        sizes = split_sizes(n, self.chunk("sample"))
        if len(sizes) == 1:
            return self.model.sample(n, generator)
        return torch.cat([self.model.sample(size, generator) for size in sizes])


def over_budget(error: BaseException | None) -> bool:
    """The solve ran out of its step budget (on the loop: hand the requests to the thread)."""
    return isinstance(error, SolverError) and error.field == "solver.max_num_steps"


def settle(
    futures: list[Future[Tensor]] | list[asyncio.Future[Tensor | None]], outcomes: list[Outcome]
) -> None:
    """Give each future its ``(result, error)`` outcome (thread and event-loop futures alike)."""
    for future, (result, error) in zip(futures, outcomes, strict=True):
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

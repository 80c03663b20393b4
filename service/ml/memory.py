"""Peak-memory estimates of training steps and queries, and splitting work to fit a byte budget.

The estimates count the float tensors that grow with the batch (activations kept for the backward
pass, the Jacobian tangents of the exact trace, solver stages, latent states on the union time grid)
at 4 bytes each (float32 serving and training), times ``SAFETY`` for allocator slack and temporaries.
They are meant to refuse requests that cannot fit (gigabytes over), not to predict a run's footprint
to the megabyte. Adaptive solvers' step counts are unknown before a solve; a backprop estimate
assumes ``ADAPTIVE_STEPS_ASSUMED`` steps (at most ``max_num_steps``), so for those the check is a
floor and the worker's memory remains the last guard.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from service.ml.errors import ConfigError, DataError
from service.ml.ode import SolverConfig

__all__ = [
    "ADAPTIVE_STEPS_ASSUMED",
    "FLOAT_BYTES",
    "SAFETY",
    "STAGES",
    "check_training_memory",
    "chunk_size",
    "evaluations_kept",
    "format_bytes",
    "greedy_chunks",
    "split_sizes",
]

FLOAT_BYTES = 4
SAFETY = 2
ADAPTIVE_STEPS_ASSUMED = 16
STAGES = {
    "euler": 1,
    "midpoint": 2,
    "heun3": 3,
    "rk4": 4,
    "adaptive_heun": 2,
    "fehlberg2": 3,
    "bosh3": 4,
    "dopri5": 7,
    "dopri8": 13,
}
"""Dynamics evaluations per step of each method (torchdiffeq's tableaux)."""


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def evaluations_kept(solver: SolverConfig, span: float) -> int:
    """Dynamics evaluations whose activations a training solve over ``span`` keeps for backward.

    Backprop keeps every evaluation of every step; the adjoint method keeps about one at a time
    (its backward pass re-solves and differentiates one evaluation at a time), counted as two."""
    if solver.adjoint:
        return 2
    if solver.adaptive:
        steps = min(solver.max_num_steps, ADAPTIVE_STEPS_ASSUMED)
    else:
        steps = min(solver.max_num_steps, math.ceil(abs(span) / solver.step_size))
    return max(1, steps) * STAGES[solver.method]


def check_training_memory(
    per_item: int, batch_size: int, budget: int, *, adjoint_per_item: int | None = None
) -> int:
    """The estimate ``per_item * batch_size``; ``ConfigError`` naming the budget and the fix above it.

    ``adjoint_per_item``: the estimate per item with ``solver.adjoint`` (offered as a fix when it
    would let the batch fit and the request uses backprop)."""
    estimate = per_item * batch_size
    if estimate <= budget:
        return estimate
    fits = budget // max(1, per_item)
    fixes = []
    if fits >= 1:
        fixes.append(f"reduce training.batch_size to <= {fits}")
    if adjoint_per_item is not None and adjoint_per_item < per_item:
        with_adjoint = budget // max(1, adjoint_per_item)
        if with_adjoint >= 1:
            fixes.append(f"set solver.adjoint to true (then batch_size <= {with_adjoint})")
    fixes.append("or use narrower model_config hidden widths / a shorter integration time")
    raise ConfigError(
        f"a training step is estimated at {format_bytes(estimate)} ({format_bytes(per_item)} per item "
        f"x batch_size {batch_size}), over the training memory budget of {format_bytes(budget)} "
        "(ODESERVE_TRAIN_MEMORY_BYTES)",
        value=estimate,
        fix=", ".join(fixes),
        field="training.batch_size",
    )


def chunk_size(per_item: int, budget: int, *, what: str, field: str) -> int:
    """Items per chunk so a chunk stays within ``budget``; ``DataError`` if one item alone is over."""
    if per_item > budget:
        raise DataError(
            f"one {what} alone is estimated at {format_bytes(per_item)}, over the query memory budget "
            f"of {format_bytes(budget)} (ODESERVE_QUERY_MEMORY_BYTES)",
            value=per_item,
            fix="the model is too large to serve within the budget; raise the budget on the server",
            field=field,
        )
    return max(1, budget // max(1, per_item))


def greedy_chunks(
    lengths: Sequence[int], cost: Callable[[int, int, int], int], budget: int, *, what: str, field: str
) -> list[tuple[int, int]]:
    """Split items of the given ``lengths`` into consecutive ``(start, stop)`` chunks whose estimate
    ``cost(count, total_length, longest)`` stays within ``budget`` (one pass, linear).

    A single item over the budget raises ``DataError`` naming ``field[index]``."""
    chunks: list[tuple[int, int]] = []
    start, total, longest = 0, 0, 0
    for index, length in enumerate(lengths):
        grown = (index - start + 1, total + length, max(longest, length))
        if index > start and cost(*grown) > budget:
            chunks.append((start, index))
            start, grown = index, (1, length, length)
        if grown[0] == 1 and (alone := cost(*grown)) > budget:
            raise DataError(
                f"{field}[{index}]: one {what} alone is estimated at {format_bytes(alone)}, over the "
                f"query memory budget of {format_bytes(budget)} (ODESERVE_QUERY_MEMORY_BYTES)",
                value=alone,
                fix=f"send a shorter {what} (fewer points) or split it",
                field=f"{field}[{index}]",
            )
        _, total, longest = grown
    if start < len(lengths):
        chunks.append((start, len(lengths)))
    return chunks


def split_sizes(total: int, chunk: int) -> Sequence[int]:
    """``total`` as sizes of at most ``chunk`` each (``[]`` for 0)."""
    return [min(chunk, total - i) for i in range(0, total, chunk)]

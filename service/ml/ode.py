"""ODE solving for every model: one ``solve()`` over torchdiffeq with a validated ``SolverConfig``.

``solve`` always runs under a finite step budget, counts function evaluations (NFE) separately for the
forward and the backward pass, and turns torchdiffeq's bare ``AssertionError``s (``max_num_steps
exceeded``, ``underflow in dt``) and non-finite states into a ``SolverError`` that says how to fix the
problem. Neural ODEs: Chen et al. 2018, arXiv:1806.07366.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from service.ml.errors import SolverError

__all__ = [
    "SOLVERS",
    "NfeCounter",
    "SolverConfig",
    "SolverInfo",
    "fix_hint",
    "State",
    "solve",
    "solver_errors",
]

State = Tensor | tuple[Tensor, ...]


@dataclass(frozen=True)
class SolverInfo:
    """What users may pick as ``solver.method``: torchdiffeq's name, order, adaptive or fixed step."""

    order: int
    adaptive: bool


# Users choose from these keys; API enums are generated from them.
SOLVERS: dict[str, SolverInfo] = {
    "dopri5": SolverInfo(order=5, adaptive=True),
    "dopri8": SolverInfo(order=8, adaptive=True),
    "bosh3": SolverInfo(order=3, adaptive=True),
    "fehlberg2": SolverInfo(order=2, adaptive=True),
    "adaptive_heun": SolverInfo(order=2, adaptive=True),
    "euler": SolverInfo(order=1, adaptive=False),
    "midpoint": SolverInfo(order=2, adaptive=False),
    "heun3": SolverInfo(order=3, adaptive=False),
    "rk4": SolverInfo(order=4, adaptive=False),
}

SolverMethod = Literal[
    "dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint", "heun3", "rk4"
]


class SolverConfig(BaseModel):
    """How to integrate: method, tolerances, adjoint or backprop, and the step budget.

    ``max_num_steps`` bounds adaptive solvers (each step costs several NFE); for fixed-step methods
    the interval is cut into ``ceil(|t1 - t0| / step_size)`` steps, which must not exceed it either.
    Fixed-step methods ignore the tolerances while training; FFJORD densities and samples are then
    served by adaptive dopri5 at rtol/atol (``as_adaptive``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    method: SolverMethod = Field("dopri5", description="Integration method (torchdiffeq name).")
    # 1e-3: tighter tolerances cost NFE without improving held-out NLL on the toy densities
    # (benchmarks/results/tolerance_study.md); it is also the serving tolerance of trained flows.
    rtol: float = Field(1e-3, gt=0, lt=1, description="Relative tolerance of adaptive methods.")
    atol: float = Field(1e-3, gt=0, lt=1, description="Absolute tolerance of adaptive methods.")
    adjoint: bool = Field(
        False, description="Adjoint gradients (O(1) memory in the number of steps) vs backprop."
    )
    max_num_steps: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Step budget; past it the solve fails with a clear error.",
    )
    step_size: float = Field(
        0.05,
        gt=0,
        le=10,
        description="Step size of fixed-step methods (euler, midpoint, heun3, rk4).",
    )

    @model_validator(mode="after")
    def _tolerances_meaningful(self) -> SolverConfig:
        if SOLVERS[self.method].adaptive and self.rtol < 1e-13 and self.atol < 1e-13:
            raise ValueError("rtol and atol below 1e-13 are beneath float64 resolution; use >= 1e-12")
        return self

    @property
    def adaptive(self) -> bool:
        return SOLVERS[self.method].adaptive

    def as_adaptive(self) -> SolverConfig:
        """This config if adaptive, else dopri5 at the same rtol/atol (how trained models are served)."""
        return self if self.adaptive else self.model_copy(update={"method": "dopri5"})

    def bounded(self, rtol_floor: float, atol_floor: float, max_num_steps: int) -> SolverConfig:
        """This config with tolerances no tighter than the floors and at most ``max_num_steps``.

        Serving's budget: a run trained at rtol = atol = 1e-12 with 100 000 steps must not make one
        density query cost seconds to minutes."""
        update = {
            "rtol": max(self.rtol, rtol_floor),
            "atol": max(self.atol, atol_floor),
            "max_num_steps": min(self.max_num_steps, max_num_steps),
        }
        return self.model_copy(update=update)


@dataclass
class NfeCounter:
    """Counts dynamics evaluations; ``solve`` switches ``phase`` to 'backward' once it returns.

    With ``adjoint=True`` the backward pass re-solves an augmented ODE and each of its evaluations is
    counted as it happens. With backprop through the solver the backward pass differentiates every
    recorded forward evaluation once, so those are counted as backward evaluations as well.
    """

    forward: int = 0
    backward: int = 0
    phase: str = "forward"

    def reset(self) -> None:
        self.forward = 0
        self.backward = 0
        self.phase = "forward"

    def record(self) -> None:
        if self.phase == "forward":
            self.forward += 1
        else:
            self.backward += 1


class _CountedDynamics(nn.Module):
    """Wraps the dynamics so every evaluation is counted; parameters stay those of ``func``."""

    def __init__(self, func: nn.Module, counter: NfeCounter) -> None:
        super().__init__()
        self.func = func
        self.counter = counter

    def forward(self, t: Tensor, state: State) -> State:
        self.counter.record()
        return self.func(t, state)


def fix_hint(config: SolverConfig) -> str:
    """How to get past a failed solve with this configuration (used in every SolverError)."""
    if config.adaptive:
        return (
            f"loosen rtol/atol (now {config.rtol:g}/{config.atol:g}) or raise max_num_steps "
            f"(now {config.max_num_steps})"
        )
    return f"raise step_size (now {config.step_size:g}) or raise max_num_steps"


@contextmanager
def solver_errors(config: SolverConfig) -> Iterator[None]:
    """Translate torchdiffeq's bare assertion failures (forward or adjoint backward) to SolverError."""
    try:
        yield
    except AssertionError as exc:
        text = str(exc)
        if "max_num_steps" in text:
            message = f"step budget exhausted: {config.method} needed more than {config.max_num_steps} steps"
        elif "underflow" in text:
            message = f"step size underflow in {config.method}: the dynamics became too stiff"
        elif "non-finite" in text:
            message = "the ODE state became non-finite (NaN or inf) during integration"
        else:
            message = f"the ODE solver failed: {text[:200]}"
        raise SolverError(message, value=text[:200], fix=fix_hint(config), field="solver") from None


def _fixed_grid(config: SolverConfig) -> Callable[[object, Tensor, Tensor], Tensor]:
    def grid(_func: object, _y0: Tensor, t: Tensor) -> Tensor:
        spans = (t[1:] - t[:-1]).detach().abs()
        counts = [max(1, math.ceil(float(span) / config.step_size - 1e-9)) for span in spans]
        steps = sum(counts)
        if steps > config.max_num_steps:
            raise SolverError(
                f"step budget exhausted: {steps} fixed steps of {config.step_size:g} over "
                f"[{float(t[0]):g}, {float(t[-1]):g}] exceed max_num_steps={config.max_num_steps}",
                value=steps,
                fix=fix_hint(config),
                field="solver.max_num_steps",
            )
        # Subdivide each requested interval so every output time lies exactly on the grid.
        pieces = [t[:1]]
        for i, count in enumerate(counts):
            frac = torch.arange(1, count + 1, dtype=t.dtype, device=t.device) / count
            piece = t[i] + (t[i + 1] - t[i]) * frac
            piece[-1] = t[i + 1]
            pieces.append(piece)
        return torch.cat(pieces)

    return grid


def _requires_grad(state: State) -> bool:
    tensors = state if isinstance(state, tuple) else (state,)
    return any(x.requires_grad for x in tensors)


def _all_finite(state: State) -> bool:
    tensors = state if isinstance(state, tuple) else (state,)
    return all(bool(torch.isfinite(x).all()) for x in tensors)


def solve(
    func: nn.Module,
    y0: State,
    t: Tensor,
    config: SolverConfig,
    counter: NfeCounter | None = None,
) -> State:
    """Integrate ``dy/dt = func(t, y)`` from ``t[0]`` through every time in ``t``.

    Args:
        func: the dynamics, an ``nn.Module`` (its parameters receive adjoint gradients).
        y0: initial state, a tensor or a tuple of tensors of any shapes.
        t: 1-D strictly monotone tensor of times, shape ``(T,)``; may require grad.
        config: the solver configuration.
        counter: optional NFE counter; reset and filled by this call.

    Returns:
        The state at each time, each tensor with a leading dimension ``T``.

    Raises:
        SolverError: budget exceeded, step underflow, or non-finite values in the solution.
    """
    counter = counter if counter is not None else NfeCounter()
    counter.reset()
    counted = _CountedDynamics(func, counter)
    if config.adaptive:
        options: dict[str, object] = {"max_num_steps": config.max_num_steps}
    else:
        options = {"grid_constructor": _fixed_grid(config)}
    kwargs = dict(rtol=config.rtol, atol=config.atol, method=config.method, options=options)
    with solver_errors(config):
        if config.adjoint and torch.is_grad_enabled():
            params = tuple(p for p in func.parameters() if p.requires_grad)
            solution = odeint_adjoint(counted, y0, t, adjoint_params=params, **kwargs)
        else:
            solution = odeint(counted, y0, t, **kwargs)
    if not config.adjoint and _requires_grad(solution):
        counter.backward = counter.forward
    counter.phase = "backward"
    if not _all_finite(solution):
        raise SolverError(
            "the ODE solution contains NaN or inf",
            fix=f"{fix_hint(config)}; or lower the learning rate",
            field="solver",
        )
    return solution

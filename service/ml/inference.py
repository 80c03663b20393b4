"""A lean adaptive Dormand–Prince 5(4) integrator for no-grad serving.

Training keeps torchdiffeq (``service.ml.ode.solve``): it supplies the adjoint and backprop through
the solver. Serving needs neither, and at small batches torchdiffeq's per-step Python and tensor
bookkeeping (tuple flattening, dense-output fitting, per-step finiteness asserts) costs more than the
network itself. This integrator keeps one preallocated stage buffer ``K`` of shape ``(7, N)``, where
``N`` is the total number of state elements; the state tensors the dynamics sees are views into
flat buffers, so no ``cat``/``split`` happens per evaluation, and every stage input is one
``addmm`` against ``K``. The only host synchronisation per step is the error-ratio scalar.

Semantics follow torchdiffeq's ``dopri5`` where it matters for results:

* the error of each tensor of a tuple state is the RMS of ``err / (atol + rtol * max(|y0|, |y1|))``
  and the step's error ratio is the maximum over the tensors (torchdiffeq's mixed norm);
* the step-size controller and the initial step selection (Hairer, Norsett & Wanner, *Solving ODEs I*,
  II.4) use the same constants: safety 0.9, growth at most x10, shrink at least x0.2 on rejection,
  no shrinking on acceptance, exponent 1/5;
* the first-same-as-last property reuses the last stage, so a step costs 6 evaluations and a solve
  ``2 + 6 * steps`` (accepted and rejected).

Differences: the embedded 4th-order weights are Dormand & Prince's original ones (1980), requested
output times are hit exactly by shortening the step that would cross them (no dense output), and the
step budget counts every step of the whole solve. Neural ODEs: arXiv:1806.07366.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from service.ml.errors import SolverError
from service.ml.ode import NfeCounter, SolverConfig, State, fix_hint

__all__ = ["DOPRI5", "ButcherTableau", "solve_inference"]

SAFETY = 0.9
MAX_GROWTH = 10.0
MAX_SHRINK = 0.2


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit embedded Runge–Kutta pair with the FSAL property (last stage = solution)."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]  # a[i] weighs stages 0..i-1 for stage i (a[0] is empty)
    error: tuple[float, ...]  # b - b_hat, weights of the error estimate over all stages
    order: int


DOPRI5 = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    error=(
        35 / 384 - 5179 / 57600,
        0.0,
        500 / 1113 - 7571 / 16695,
        125 / 192 - 393 / 640,
        -2187 / 6784 + 92097 / 339200,
        11 / 84 - 187 / 2100,
        -1 / 40,
    ),
    order=5,
)

Dynamics = Callable[[Tensor, State], State]

# Coefficient tables per (tableau, dtype, device): row 0 holds the error weights, row i >= 1 the
# weights of stage i's input. Read-only once built, so sharing them across threads is safe.
_TABLES: dict[tuple[ButcherTableau, torch.dtype, torch.device], Tensor] = {}


def _table(tableau: ButcherTableau, dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (tableau, dtype, device)
    table = _TABLES.get(key)
    if table is None:
        stages = len(tableau.c)
        rows = [list(tableau.error)] + [list(tableau.a[i]) + [0.0] * (stages - i) for i in range(1, stages)]
        table = torch.tensor(rows, dtype=dtype, device=device)
        _TABLES[key] = table
    return table


def _non_finite(config: SolverConfig) -> SolverError:
    return SolverError(
        "the ODE state became non-finite (NaN or inf) during integration",
        fix=f"{fix_hint(config)}; or lower the learning rate",
        field="solver",
    )


def _row_views(buffer: Tensor, shapes: list[torch.Size], sizes: list[int]) -> list[tuple[Tensor, ...]]:
    """One tuple of state-shaped views per row of ``buffer`` ``(R, N)``; no data is copied."""
    rows = buffer.shape[0]
    pieces = [buffer] if len(sizes) == 1 else buffer.split(sizes, dim=1)
    columns = [p.view(rows, *shape).unbind(0) for p, shape in zip(pieces, shapes, strict=True)]
    return list(zip(*columns, strict=True))


class _Workspace:
    """Flat buffers for one solve and the views the dynamics and the stage updates use.

    ``k`` ``(stages, N)`` holds the stage derivatives, ``y0``/``y1``/``scratch`` ``(1, N)`` the
    current state, the candidate and the stage inputs; the dynamics only ever sees views of them.
    """

    def __init__(self, y0: tuple[Tensor, ...], tableau: ButcherTableau, rtol: float, atol: float) -> None:
        first = y0[0]
        if any(y.dtype != first.dtype or y.device != first.device for y in y0):
            raise TypeError("every tensor of the state must share one dtype and device")
        if not first.is_floating_point():
            raise TypeError(f"the state must be floating point, got {first.dtype}")
        self.key: tuple[object, ...] = ()
        self.shapes = [y.shape for y in y0]
        self.sizes = [y.numel() for y in y0]
        n, stages = sum(self.sizes), len(tableau.c)
        kw = {"dtype": first.dtype, "device": first.device}
        # Zeroed, and kept finite by the solve (a non-finite stage stops it), so each stage input
        # may use a full-width coefficient row: rows not yet written this step get weight 0.
        self.k = torch.zeros(stages, n, **kw)
        self.k_first, self.k_second, self.k_last = self.k[0], self.k[1], self.k[-1]
        # Stage times of a step, ``t + c * dt``: one buffer filled per step, one 0-d view per stage.
        self.c = torch.tensor(tableau.c, dtype=torch.float64, device=first.device)
        self.stage_times = torch.empty(stages, dtype=torch.float64, device=first.device)
        self.stage_time_views = self.stage_times.unbind(0)
        self.k_views = _row_views(self.k, self.shapes, self.sizes)
        states = torch.empty(3, n, **kw)
        self.y0, self.y1, self.scratch = states.unsqueeze(1).unbind(0)
        self.y0_row, self.y1_row = states[0], states[1]  # the same, flat ``(N,)``
        self.y0_views, self.y1_views, self.scratch_views = _row_views(states, self.shapes, self.sizes)
        # abs0/abs1 hold |y| + atol/rtol, so rtol * max(abs0, abs1) is the error tolerance.
        self.abs0, self.abs1, self.err, self.tol = torch.empty(4, 1, n, **kw).unbind(0)
        self.err_flat = self.err.view(-1)
        self.shift = torch.scalar_tensor(atol / rtol, **kw)
        # Row 0: the error weights divided by rtol; row i >= 1: the weights of stage i's input.
        # Steps scale them by dt inside addmm/the norm, so no per-step table is built.
        self.table = _table(tableau, **kw).clone()
        self.table[0].div_(rtol)
        self.table_rows = self.table.view(stages, 1, stages).unbind(0)  # each (1, stages)
        self.segment: Tensor | None = None
        if len(y0) > 1:  # segment means as one matmul: column s averages tensor s
            self.segment = torch.zeros(n, len(y0), **kw)
            offset = 0
            for s, size in enumerate(self.sizes):
                self.segment[offset : offset + size, s] = 1.0 / max(size, 1)
                offset += size
            self.ratio = torch.empty(1, len(y0), **kw)

    def outputs(self, count: int) -> tuple[Tensor, list[Tensor], tuple[Tensor, ...]]:
        """Output buffer ``(T, N)``, its rows, and per-tensor views ``(T, *shape)`` of it."""
        out = torch.empty(count, self.k.shape[1], dtype=self.k.dtype, device=self.k.device)
        pieces = [out] if len(self.sizes) == 1 else out.split(self.sizes, dim=1)
        views = tuple(p.view(count, *s) for p, s in zip(pieces, self.shapes, strict=True))
        return out, list(out.unbind(0)), views

    def err_rms_sq(self) -> float:
        """Squared mixed norm of ``err``: the max over the state's tensors of their mean square.

        Overwrites ``err`` when the state is a tuple.
        """
        if self.segment is None:
            return float(torch.dot(self.err_flat, self.err_flat)) / self.err_flat.numel()
        self.err.mul_(self.err)
        torch.mm(self.err, self.segment, out=self.ratio)
        return float(self.ratio.max())


# Idle workspaces by state signature. A solve takes one out (so threads and nested solves never
# share buffers) and puts it back only after a successful solve, when its buffers are finite.
_IDLE: dict[tuple[object, ...], _Workspace] = {}
_IDLE_MAX = 8
_CACHE_MAX_ELEMENTS = 1 << 20


def _signature(state: tuple[Tensor, ...], rtol: float, atol: float) -> tuple[object, ...]:
    return (rtol, atol, *((y.shape, y.dtype, y.device) for y in state))


def _acquire(state: tuple[Tensor, ...], tableau: ButcherTableau, rtol: float, atol: float) -> _Workspace:
    key = _signature(state, rtol, atol)
    workspace = _IDLE.pop(key, None)
    if workspace is None:
        workspace = _Workspace(state, tableau, rtol, atol)
        workspace.key = key
    return workspace


def _release(workspace: _Workspace) -> None:
    if workspace.k.numel() > _CACHE_MAX_ELEMENTS:
        return
    _IDLE[workspace.key] = workspace
    while len(_IDLE) > _IDLE_MAX:
        _IDLE.pop(next(iter(_IDLE)), None)


class _Stepper:
    """Takes Dormand–Prince steps on a :class:`_Workspace`; counts evaluations."""

    def __init__(self, func: Dynamics, y0: State, tableau: ButcherTableau, config: SolverConfig) -> None:
        self.single = isinstance(y0, Tensor)
        state = (y0,) if isinstance(y0, Tensor) else tuple(y0)
        self.ws = _acquire(state, tableau, config.rtol, config.atol)
        for target, value in zip(self.ws.y0_views, state, strict=True):
            target.copy_(value)
        self.func = func
        self.tableau = tableau
        self.rtol = config.rtol
        self.nfe = 0
        self.device = self.ws.k.device

    def call(self, time: Tensor, views: tuple[Tensor, ...], row: int) -> None:
        """Evaluate the dynamics at ``(time, views)`` into stage row ``row`` of ``K``."""
        self.nfe += 1
        if self.single:
            self.ws.k_views[row][0].copy_(self.func(time, views[0]))
            return
        for target, value in zip(self.ws.k_views[row], self.func(time, views), strict=True):
            target.copy_(value)

    def call_at(self, t: float, views: tuple[Tensor, ...], row: int) -> None:
        """:meth:`call` at a time given as a float (a fresh 0-d tensor, outside the step loop)."""
        self.call(torch.scalar_tensor(t, dtype=torch.float64, device=self.device), views, row)

    def initial_step(self, t0: float, direction: float) -> float:
        """Hairer's starting step size (one extra evaluation); ``K[0]`` must hold ``f(t0, y0)``.

        The tolerance ``atol + rtol |y0|`` is ``rtol * abs0``, so each norm below is divided by rtol.
        """
        ws, order, rtol = self.ws, self.tableau.order - 1, self.rtol
        f0 = ws.k_first
        torch.div(ws.y0, ws.abs0, out=ws.err)
        d0 = math.sqrt(ws.err_rms_sq()) / rtol
        torch.div(f0, ws.abs0, out=ws.err)
        d1 = math.sqrt(ws.err_rms_sq()) / rtol
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        torch.add(ws.y0, f0, alpha=direction * h0, out=ws.y1)
        self.call_at(t0 + direction * h0, ws.y1_views, 1)
        torch.sub(ws.k_second, f0, out=ws.err_flat)
        ws.err.div_(ws.abs0)
        d2 = math.sqrt(ws.err_rms_sq()) / rtol / h0
        if not math.isfinite(d0 + d1 + d2):
            return math.nan
        d12 = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if d12 <= 1e-15 else (0.01 / d12) ** (1.0 / (order + 1))
        return min(100 * h0, h1)

    def step(self, t: float, dt: float) -> float:
        """Attempt one step of size ``dt`` from ``(t, y0)``; ``y1`` and ``K`` hold the result.

        Returns the error ratio (<= 1 means accept).
        """
        ws = self.ws
        times = ws.stage_time_views
        last = len(times) - 1
        torch.mul(ws.c, dt, out=ws.stage_times).add_(t)
        for i in range(1, last):
            torch.addmm(ws.y0, ws.table_rows[i], ws.k, alpha=dt, out=ws.scratch)
            self.call(times[i], ws.scratch_views, i)
        torch.addmm(ws.y0, ws.table_rows[last], ws.k, alpha=dt, out=ws.y1)
        self.call(times[last], ws.y1_views, last)
        # err = (E . K) dt / (atol + rtol max(|y0|, |y1|)); dt leaves the norm as |dt|.
        torch.mm(ws.table_rows[0], ws.k, out=ws.err)
        torch.abs(ws.y1, out=ws.abs1).add_(ws.shift)
        torch.maximum(ws.abs0, ws.abs1, out=ws.tol)
        ws.err.div_(ws.tol)
        return abs(dt) * math.sqrt(ws.err_rms_sq())

    def accept(self) -> None:
        """Make ``y1`` the current state; the last stage is ``f(t1, y1)`` (FSAL)."""
        ws = self.ws
        ws.y0, ws.y1 = ws.y1, ws.y0
        ws.y0_row, ws.y1_row = ws.y1_row, ws.y0_row
        ws.abs0, ws.abs1 = ws.abs1, ws.abs0
        ws.y0_views, ws.y1_views = ws.y1_views, ws.y0_views
        ws.k_first.copy_(ws.k_last)


def _next_step(dt: float, ratio: float, order: int) -> float:
    if ratio == 0.0:
        return dt * MAX_GROWTH
    shrink = 1.0 if ratio < 1.0 else MAX_SHRINK
    return dt * min(MAX_GROWTH, max(SAFETY / ratio ** (1.0 / order), shrink))


def _times(t: Tensor) -> list[float]:
    if t.dim() != 1 or t.shape[0] < 2:
        raise ValueError(f"t must be 1-D with at least two times, got shape {tuple(t.shape)}")
    times = [float(v) for v in t.tolist()]
    steps = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    if not (all(s > 0 for s in steps) or all(s < 0 for s in steps)):
        raise ValueError("t must be strictly increasing or strictly decreasing")
    return times


@torch.no_grad()
def solve_inference(
    func: Dynamics,
    y0: State,
    t: Tensor,
    config: SolverConfig,
    counter: NfeCounter | None = None,
) -> State:
    """Integrate ``dy/dt = func(t, y)`` with adaptive Dormand–Prince 5(4), without gradients.

    A drop-in for :func:`service.ml.ode.solve` under ``torch.no_grad``. Any adaptive
    ``config.method`` runs as dopri5 at ``config.rtol``/``config.atol``; fixed-step methods are
    rejected (use ``solve``).

    Args:
        func: the dynamics; called as ``func(t, y)`` with ``t`` a float64 0-d tensor and ``y``
            shaped like ``y0``; returns the same structure. ``t`` and ``y`` are views of the
            solver's buffers, valid for the call only: later steps overwrite them.
        y0: initial state, a tensor or a tuple of tensors sharing one dtype and device.
        t: 1-D strictly monotone times, shape ``(T,)``.
        config: tolerances and ``max_num_steps`` (every accepted or rejected step counts).
        counter: optional NFE counter; reset and filled (forward NFE) by this call.

    Returns:
        The state at each time in ``t``, each tensor with a leading dimension ``T``.

    Raises:
        SolverError: step budget exhausted, step size underflow, or a non-finite state.
    """
    if not config.adaptive:
        raise ValueError(f"solve_inference is adaptive-only; {config.method!r} is fixed-step")
    counter = counter if counter is not None else NfeCounter()
    counter.reset()
    times = _times(t)
    stepper = _Stepper(func, y0, DOPRI5, config)
    flat, rows, states = stepper.ws.outputs(len(times))
    try:
        _integrate(stepper, times, rows, config)
    finally:
        counter.forward += stepper.nfe
        counter.phase = "backward"
    # The largest magnitude is NaN or inf exactly when some value is (cheaper than isfinite.all()).
    if flat.numel() and not math.isfinite(float(torch.linalg.vector_norm(flat, ord=math.inf))):
        raise _non_finite(config)
    _release(stepper.ws)
    return states[0] if stepper.single else states


def _integrate(stepper: _Stepper, times: list[float], rows: list[Tensor], config: SolverConfig) -> None:
    """Step through ``times``, writing the state at each of them into ``rows``."""
    ws, order = stepper.ws, DOPRI5.order
    direction = 1.0 if times[-1] > times[0] else -1.0
    rows[0].copy_(ws.y0_row)
    t = times[0]
    stepper.call_at(t, ws.y0_views, 0)
    torch.abs(ws.y0, out=ws.abs0).add_(ws.shift)
    dt = direction * stepper.initial_step(t, direction)
    if not math.isfinite(dt):
        raise _non_finite(config)
    steps = 0
    for target, row in zip(times[1:], rows[1:], strict=True):
        while t != target:
            if steps >= config.max_num_steps:
                raise SolverError(
                    f"step budget exhausted: dopri5 needed more than {config.max_num_steps} steps",
                    value=config.max_num_steps,
                    fix=fix_hint(config),
                    field="solver.max_num_steps",
                )
            steps += 1
            clipped = (t + dt - target) * direction >= 0
            dt_step = target - t if clipped else dt
            if t + dt_step == t:
                raise SolverError(
                    "step size underflow in dopri5: the dynamics became too stiff",
                    value=dt_step,
                    fix=fix_hint(config),
                    field="solver",
                )
            ratio = stepper.step(t, dt_step)
            if not math.isfinite(ratio):
                raise _non_finite(config)
            proposal = _next_step(dt_step, ratio, order)
            if ratio <= 1.0:
                stepper.accept()
                t = target if clipped else t + dt_step
                # A step shortened to land on an output time says little about the next one.
                dt = max(proposal, dt, key=abs) if clipped else proposal
            else:
                dt = proposal
        row.copy_(ws.y0_row)

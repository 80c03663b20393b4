"""FFJORD: a continuous normalizing flow with free-form dynamics (Grathwohl et al., arXiv:1810.01367).

Data ``x`` sits at ``t = 0`` and the standard normal base at ``t = T``. With ``dx/dt = f(t, x)``:

    log p(x) = log N(z(T); 0, I) + integral_0^T tr(df/dx)(t, x(t)) dt

Data are standardised by an affine map fitted to the training set before the flow (its constant
log-determinant is added back exactly), so targets far from the origin need no long transport.
Training integrates the configured divergence estimator (exact or Hutchinson) and may add the RNODE
penalties (kinetic energy and Jacobian Frobenius norm, Finlay et al., arXiv:2002.02798). ``log_prob``
always uses the exact trace, so served densities carry no estimator noise. For the default net (one
or two concat-squash hidden layers) the exact trace has a closed form (:mod:`service.ml.trace`,
about one extra hidden layer per evaluation instead of ``D`` tangents), in serving and training;
the full Jacobian is carried only where RNODE's Frobenius norm needs it (``jacobian_weight > 0``).

Fixed-step training (rk4, ...) is checked against the continuous flow: every
``step_check_interval`` steps the batch NLL of the training solve is compared with the adaptive
solver's (the density that will be served); when they differ by more than ``step_tolerance`` nats
the step shrinks by the factor that the method's order predicts brings the gap to half the
tolerance (at most halving it per check). The scale is a buffer (``step_scale``), so it is
checkpointed and a resumed run continues bit-for-bit. Without it a net can learn to exploit
coarse steps: on 8gaussians, rk4 at step 0.5 with RNODE reached the reference's NLL in under 3% of
its time, then T grew from 2 to 5 in 1000 iterations while the rk4 batch NLL fell below the true
entropy and the served NLL rose to 3.1.
With the check that recipe (rk4 at step 0.5, RNODE 0.01) is the default, the measured winner of
``benchmarks/bench_train.py``; latent ODE keeps adaptive dopri5. A learnt T stops at
``max_integration_time`` (default 2): the RNODE penalties reward slower flows, so T kept growing
(2.6 on checkerboard after 4 minutes, six rk4 steps per solve) without a better NLL.

Serving and evaluation: with gradients disabled, ``log_prob``, ``sample`` and ``sample_with_log_prob``
always integrate with the lean adaptive dopri5 of :mod:`service.ml.inference` at the configured
rtol/atol, whatever method trained the model (any adaptive method maps to dopri5, and a fixed-step
method's discretisation is not reused). Densities are then those of the continuous flow, consistent
with samples and normalised; training keeps torchdiffeq.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from service.ml.divergence import hutchinson_divergence, sample_noise, standard_normal
from service.ml.inference import solve_inference
from service.ml.memory import FLOAT_BYTES, SAFETY, evaluations_kept
from service.ml.models.base import DensityModel, LossOutput, standard_normal_log_prob
from service.ml.models.ffjord_config import (
    FFJORDConfig,
    closed_form_trace,
    lean_floats,
)
from service.ml.nets import LeanJacobianNet, ODENet, build_odenet
from service.ml.ode import SOLVERS, NfeCounter, SolverConfig, State, solve

__all__ = ["FFJORD", "FFJORDConfig"]

EVAL_CHUNK = 8192
# The step check shrinks a fixed step so that the gap should fall to this share of the tolerance,
# by at most halving it per check.
STEP_GAP_AIM = 0.5
STEP_FACTOR_MIN = 0.5


FLOW_MATCHING_LR = 1e-2
"""Flow matching's default lr. 8gaussians, 30 s, seeds 0/1/2 (benchmarks/bench_train --budget 30):
the reference's NLL in 0.46x / 0.39x / ~0.55x the likelihood default's time at 1e-2, 1.21x /
1.23x / ~0.97x at 3e-3 (the likelihood objective's rate)."""


class CNFDynamics(nn.Module):
    """Right-hand side of the augmented ODE.

    State ``x`` alone (shape ``(B, D)``) gives the plain flow; ``(x, logdet)`` adds the divergence;
    ``(x, logdet, kinetic, frobenius)`` adds the RNODE integrands. Extra entries have shape ``(B,)``.
    """

    def __init__(self, net: ODENet) -> None:
        super().__init__()
        self.net = net
        self.estimator: str = "exact"
        self.noise: Tensor | None = None
        self.lean: LeanJacobianNet | None = None  # set for the duration of a no-grad solve
        self.divergence_path: str = ""  # how the last exact-trace evaluation ran (tests, benchmarks)
        self.frobenius = True  # False: RNODE's Jacobian term has weight 0 (state entry 4 is zeros)

    def forward(self, t: Tensor, state: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        if isinstance(state, Tensor):
            return self.net(t, state) if self.lean is None else self.lean.field(t, state)
        x = state[0]
        needs_jacobian = len(state) > 2 and self.frobenius
        if self.estimator == "exact" and not needs_jacobian and self.net.trace_path == "closed_form":
            # The trace alone has a closed form (service.ml.trace): no D tangents.
            self.divergence_path = "closed_form"
            lean = self.lean
            f, div = lean.field_and_trace(t, x) if lean is not None else self.net.forward_with_trace(t, x)
            if len(state) == 2:
                return f, div
            return f, div, f.square().sum(-1), torch.zeros_like(div)  # Frobenius norm unweighted
        if self.estimator == "exact":
            # RNODE's Frobenius norm needs the whole Jacobian; the lean snapshot returns it
            # transposed: trace and Frobenius norm agree.
            self.divergence_path = "tangents"
            f, jac = self.lean(t, x) if self.lean is not None else self.net.forward_with_jacobian(t, x)
            div = jac.diagonal(dim1=-2, dim2=-1).sum(-1)
            frob = jac.square().sum(dim=(-2, -1)) if len(state) > 2 else None
        else:
            f, div, frob = self._hutchinson(t, x)
        if len(state) == 2:
            return f, div
        return f, div, f.square().sum(-1), frob

    def _hutchinson(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.noise is None or self.noise.shape != x.shape:
            raise RuntimeError("Hutchinson noise must be set for each solve")
        grad_outside = torch.is_grad_enabled()
        with torch.enable_grad():
            # Outside a graph (no-grad serving, or torchdiffeq's no-grad views in the adjoint pass)
            # differentiate with respect to a fresh leaf.
            if not grad_outside or not x.requires_grad:
                x = x.detach().requires_grad_(True)
            f = self.net(t, x)
            div, frob = hutchinson_divergence(f, x, self.noise)
        if not grad_outside:
            return f.detach(), div.detach(), frob.detach()
        return f, div, frob


class FFJORD(DensityModel):
    """FFJORD density model for data of any dimension ``D >= 1``."""

    name = "ffjord"
    config_class = FFJORDConfig
    data_kind = "points"
    # The measured winner (benchmarks/bench_train.py): with RNODE 0.01 and the step check.
    default_solver = SolverConfig(method="rk4", step_size=0.5)
    objectives = ("likelihood", "flow_matching")

    @classmethod
    def training_defaults(cls, objective: str) -> dict[str, float]:
        """The shared defaults (lr 3e-3, no clipping), with ``FLOW_MATCHING_LR`` for flow matching."""
        defaults = super().training_defaults(objective)
        return (defaults | {"lr": FLOW_MATCHING_LR}) if objective == "flow_matching" else defaults

    def __init__(self, config: FFJORDConfig, dim: int, solver: SolverConfig) -> None:
        super().__init__(config, dim, solver)
        self.config: FFJORDConfig = config
        net = build_odenet(
            dim,
            config.widths(dim),
            config.activation,
            config.time_conditioning,
            config.num_frequencies,
        )
        self.dynamics = CNFDynamics(net)
        self.dynamics.frobenius = config.jacobian_weight > 0
        self.sqrt_end_time = nn.Parameter(
            torch.tensor(math.sqrt(config.integration_time)),
            requires_grad=config.learn_integration_time,
        )
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("step_scale", torch.ones(()))  # fixed-step training: the step check's shrinking

    @classmethod
    def training_bytes_per_item(cls, config: BaseModel, dim: int, solver: SolverConfig) -> int | None:
        """Activations of every kept evaluation: hidden states and, for the exact trace with the
        full Jacobian (RNODE's Jacobian norm, or no closed form), their ``D`` tangents; evaluations
        kept as ``memory.evaluations_kept`` (T: its cap when learnt)."""
        assert isinstance(config, FFJORDConfig)
        hidden = sum(config.widths(dim)) + dim
        tangents = config.jacobian_weight > 0 or not closed_form_trace(config)
        if config.divergence == "exact" and tangents:
            per_eval = 2 * hidden * (dim + 1)
        else:  # Hutchinson's one VJP, or the closed-form trace: a few activations per layer
            per_eval = 4 * hidden + 2 * dim
        span = config.integration_time
        if config.learn_integration_time and config.max_integration_time is not None:
            span = max(span, config.max_integration_time)
        floats = per_eval * evaluations_kept(solver, span) + lean_floats(config, dim)
        return FLOAT_BYTES * SAFETY * floats

    def query_bytes_per_item(self, kind: str) -> int:
        """Density: the lean exact-trace states (without the closed form: its tangent buffers
        ``(1 + D, B, width)`` per layer); sample: the field's hidden states; both plus the dopri5
        stages of the state."""
        if kind == "sample":
            floats = 2 * sum(self.config.widths(self.dim)) + 12 * self.dim
        else:
            floats = lean_floats(self.config, self.dim)
        return FLOAT_BYTES * SAFETY * floats

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints written before the step check have no step_scale: their step was never shrunk.
        state_dict.setdefault(prefix + "step_scale", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def prepare(self, data: Any) -> None:
        """Fit the standardising affine map to the training points ``data.train`` (N, D)."""
        train = data.train.to(self.loc)
        self.loc.copy_(train.mean(0))
        std = train.std(0) if train.shape[0] > 1 else torch.ones_like(self.loc)
        self.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def _standardise(self, x: Tensor) -> Tensor:
        return (x - self.loc.to(x)) / self.scale.to(x)

    def standardise(self, x: Tensor) -> Tensor:
        """Data ``(B, D)`` in the flow's coordinates (the affine map fitted by ``prepare``)."""
        return self._standardise(x)

    def velocity(self, t: Tensor, y: Tensor) -> Tensor:
        """``f(t, y)`` in standardised coordinates with one time per point: ``t (B,)``, ``y (B, D)``
        (the flow-matching regression, :mod:`service.ml.flow_matching`)."""
        return self.dynamics.net(t, y)

    def _unstandardise(self, y: Tensor) -> Tensor:
        return y * self.scale.to(y) + self.loc.to(y)

    def _log_scale(self, like: Tensor) -> Tensor:
        return self.scale.to(like).log().sum()

    @property
    def end_time(self) -> Tensor:
        """``T``; a learnt ``T`` stops at ``max_integration_time`` (no gradient beyond it)."""
        end = self.sqrt_end_time.square()
        cap = self.config.max_integration_time
        return end if cap is None else end.clamp(max=cap)

    def _times(self, reverse: bool, like: Tensor) -> Tensor:
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        end = self.end_time.to(like)
        return torch.stack([end, zero]) if reverse else torch.stack([zero, end])

    def _to_base(
        self,
        x: Tensor,
        estimator: str,
        generator: torch.Generator | None,
        regularize: bool,
        training_solve: bool = False,
    ) -> tuple[Tensor, ...]:
        """Integrate data -> base; returns final ``(z, logdet[, kinetic, frobenius])``.

        ``training_solve`` integrates with the training solver even without gradients."""
        self.dynamics.estimator = estimator
        if estimator == "hutchinson":
            self.dynamics.noise = sample_noise(tuple(x.shape), self.config.hutchinson_noise, generator, x)
        zeros = x.new_zeros(x.shape[0])
        state = (x, zeros, zeros, zeros) if regularize else (x, zeros)
        out = self._solve(state, self._times(False, x), training_solve)
        return tuple(s[-1] for s in out)

    def _solve(self, state: State, times: Tensor, training_solve: bool = False) -> State:
        """torchdiffeq when gradients are on (or ``training_solve``); else the lean adaptive dopri5."""
        if not torch.is_grad_enabled() and not training_solve:
            lean = self.dynamics.lean = self.dynamics.net.lean()
            try:
                # ``forward`` directly: nn.Module.__call__'s hook checks cost ~2 % of a small solve.
                dynamics = self.dynamics.forward
                config = (self.query_solver or self.solver).as_adaptive()
                return solve_inference(dynamics, state, times, config, self.nfe)
            finally:
                self.dynamics.lean = None
                if lean is not None:
                    lean.trim()  # the snapshot outlives the solve: keep at most 16 MiB of buffers
        return solve(self.dynamics, state, times, self.training_solver, self.nfe)

    @property
    def training_solver(self) -> SolverConfig:
        """The solver of gradient-carrying solves: a fixed step is scaled by the step check."""
        if self.solver.adaptive or float(self.step_scale) == 1.0:
            return self.solver
        return self.solver.model_copy(update={"step_size": self.solver.step_size * float(self.step_scale)})

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact-trace log-density, ``(B, D) -> (B,)``."""
        z, logdet = self._to_base(self._standardise(x), "exact", None, regularize=False)
        return self._log_density(x, z, logdet)

    def _log_density(self, x: Tensor, z: Tensor, logdet: Tensor) -> Tensor:
        """Change of variables: ``log p(x)`` from the base point ``z`` and ``logdet`` of the flow."""
        return standard_normal_log_prob(z) + logdet - self._log_scale(x)

    def sample(self, n: int, generator: torch.Generator | None = None, **_: Any) -> Tensor:
        """``n`` samples, shape ``(n, D)``: base noise pushed from ``t = T`` back to ``t = 0``."""
        z = self._base_noise(n, generator)
        y = self._solve(z, self._times(True, z))[-1]
        return self._unstandardise(y)

    def sample_with_log_prob(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Samples ``(n, D)`` and their log-density ``(n,)`` from one reverse solve."""
        z = self._base_noise(n, generator)
        self.dynamics.estimator = "exact"
        state = (z, z.new_zeros(n))
        x, reverse_logdet = self._solve(state, self._times(True, z))
        log_prob = standard_normal_log_prob(z) - reverse_logdet[-1] - self._log_scale(z)
        return self._unstandardise(x[-1]), log_prob

    def trajectory(self, points: Tensor, times: Tensor) -> Tensor:
        """States along the flow, ``(len(times), B, D)``; ``points`` are the state at ``times[0]``.

        Times are absolute, in ``[0, T]``: data lives at 0 and the base at ``T`` (``end_time``).
        Inputs and outputs are in data coordinates (the standardising map is applied around it).
        """
        states = solve(self.dynamics, self._standardise(points), times.to(points), self.solver, self.nfe)
        return self._unstandardise(states)

    def _base_noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        param = self.sqrt_end_time
        return standard_normal((n, self.dim), generator, param.dtype, param.device)

    def training_loss(self, batch: Tensor, generator: torch.Generator, iteration: int) -> LossOutput:
        regularize = self.config.regularized
        out = self._to_base(self._standardise(batch), self.config.divergence, generator, regularize)
        log_prob = self._log_density(batch, out[0], out[1])
        nll = -log_prob.mean()
        loss = nll
        stats = {"nll": float(nll.detach()), "end_time": float(self.end_time.detach())}
        interval = self.config.step_check_interval
        if not self.solver.adaptive and interval and iteration % interval == 0:
            stats |= self._check_step(batch, nll.detach())
        if regularize:
            kinetic, frobenius = out[2].mean(), out[3].mean()
            loss = loss + self.config.kinetic_weight * kinetic
            stats |= {"kinetic": float(kinetic.detach())}
            if self.dynamics.frobenius:
                loss = loss + self.config.jacobian_weight * frobenius
                stats |= {"jacobian": float(frobenius.detach())}
        return LossOutput(loss=loss, stats=stats)

    @torch.no_grad()
    def _check_step(self, batch: Tensor, nll: Tensor) -> dict[str, float]:
        """Shrink the training step if its batch NLL is off the adaptive solver's by > step_tolerance.

        The check's solves count into a scratch counter (each solve resets the one it is given) and
        their evaluations are then added to the training step's forward count: they are forward-only
        work of this iteration. They had replaced its counts, so a run whose last iteration was a
        check recorded the check's NFE and a backward NFE of 0.
        """
        training_count, self.nfe = self.nfe, NfeCounter()
        evaluations = 0
        try:
            if self.config.divergence != "exact":  # the training NLL is an estimate: recompute it
                out = self._to_base(self._standardise(batch), "exact", None, False, training_solve=True)
                evaluations += self.nfe.forward
                nll = -self._log_density(batch, *out).mean()
            served = self.log_prob(batch)
            evaluations += self.nfe.forward
        finally:
            self.nfe = training_count
        training_count.forward += evaluations
        gap = float(nll + served.mean())
        step = self.training_solver.step_size
        if abs(gap) > self.config.step_tolerance:
            self.step_scale.mul_(self._step_shrink(abs(gap)))
        return {"step_gap": gap, "step_size": step}

    def _step_shrink(self, gap: float) -> float:
        """The factor a step of the method's order p needs for ``gap`` to fall to half the tolerance.

        The global error of an order-p method scales as ``h^p``, so ``(aim / gap)^(1/p)``, at
        least 0.5. For rk4 a gap just over the tolerance asks for 0.84 (five steps over T = 2
        instead of four, 25 % more NFE), where halving doubled the NFE for a 16x smaller error;
        for euler it is always 0.5.
        """
        order = SOLVERS[self.solver.method].order
        factor = (STEP_GAP_AIM * self.config.step_tolerance / gap) ** (1.0 / order)
        return max(STEP_FACTOR_MIN, factor)

    # Validation (opt-in: ``TrainConfig.val_points``) scores held-out training points by exact NLL.
    can_validate = True

    @torch.no_grad()
    def validate(self, items: Tensor) -> dict[str, float]:
        """``val_score`` = ``val_nll``: mean exact NLL of the validation points (nats per point)."""
        nll = self.evaluate(items, torch.Generator())["test_nll"]
        return {"val_score": nll, "val_nll": nll}

    @torch.no_grad()
    def evaluate(self, data: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Mean negative log-likelihood of held-out points (nats per point)."""
        total = 0.0
        for chunk in data.split(EVAL_CHUNK):
            total += float(self.log_prob(chunk).sum())
        return {"test_nll": -total / max(1, data.shape[0])}

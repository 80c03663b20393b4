"""Conditional flow matching: train a CNF's vector field by regression, without solving the ODE.

Flow matching (Lipman et al., arXiv:2210.02747) regresses the field onto the velocity of a chosen
probability path. With straight paths between a base draw ``z ~ N(0, I)`` and a data point ``y``
(rectified flow, Liu et al., arXiv:2209.03003; Lipman's optimal-transport path with
``sigma_min = 0``) the conditional velocity is constant along the path, so one step costs one net
evaluation at one random time per pair and no ODE solve.

Time convention (FFJORD's, :mod:`service.ml.models.ffjord`): data sit at ``t = 0``, the base at
``t = T`` and ``dx/dt = f(t, x)`` carries data to noise. The path is therefore

    x_t = (1 - t/T) y + (t/T) z,    target  dx_t/dt = (z - y) / T,    t ~ U(0, T),

in the model's standardised coordinates. The learnt field is then served exactly like a
likelihood-trained one: ``log p(x)`` by the instantaneous change of variables from 0 to T and
samples by integrating from T back to 0. ``T`` (``end_time``) is held fixed (detached): a learnt
``T`` would only rescale the field.

``coupling="ot"`` pairs each minibatch's base draws with its data points by an exact optimal
transport plan for the squared Euclidean cost (Tong et al., arXiv:2302.00482; Pooladian et al.,
arXiv:2304.14772): straighter marginal paths, so fewer solver steps when serving. The assignment is
solved with ``scipy.optimize.linear_sum_assignment`` (a permutation is an optimal plan between two
uniform empirical measures of equal size), on blocks of ``OT_BLOCK`` rows to bound its cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from service.ml.divergence import standard_normal
from service.ml.errors import ConfigError
from service.ml.models.base import DensityModel, LossOutput

__all__ = [
    "COUPLINGS",
    "DEFAULT_COUPLING",
    "Coupling",
    "FlowMatchingModel",
    "flow_matching_loss",
    "objective_loss",
    "ot_permutation",
]

Coupling = Literal["independent", "ot"]
COUPLINGS: tuple[str, ...] = ("independent", "ot")
DEFAULT_COUPLING: Coupling = "ot"
"""``training.coupling`` left unset. Measured (benchmarks/bench_tabular.py, bench_train.py): OT reached
a lower test NLL than independent pairs in the same wall time on every table and toy tried."""
OT_BLOCK = 64
"""Rows per exact assignment. The Hungarian method's cost grows about cubically: on 8gaussians one
256 x 256 assignment took 6.5 ms (a flow-matching step is ~3 ms), four 64 x 64 ones 0.8 ms."""


class FlowMatchingModel(Protocol):
    """What flow matching needs from a CNF (``FFJORD`` implements it)."""

    @property
    def end_time(self) -> Tensor: ...

    def standardise(self, x: Tensor) -> Tensor: ...

    def velocity(self, t: Tensor, y: Tensor) -> Tensor: ...


def ot_permutation(base: Tensor, data: Tensor, block: int = OT_BLOCK) -> Tensor:
    """Indices ``p`` such that pairing ``base[p[i]]`` with ``data[i]`` minimises ``sum |.|^2``
    within each run of ``block`` consecutive rows (the whole batch when ``block >= B``).

    ``base`` and ``data`` have shape ``(B, D)``; returns ``(B,)`` int64 on ``base``'s device.
    """
    if base.shape[0] > block:
        parts = [
            ot_permutation(b, d, block) + start
            for start, b, d in zip(
                range(0, base.shape[0], block), base.split(block), data.split(block), strict=True
            )
        ]
        return torch.cat(parts)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn, a dependency
        raise ConfigError(
            "training.coupling 'ot' needs scipy",
            value="ot",
            fix="pip install scipy, or use training.coupling 'independent'",
            field="training.coupling",
        ) from None
    cost = torch.cdist(data.detach().double(), base.detach().double()).square()
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    order = torch.as_tensor(cols[rows.argsort()], dtype=torch.long)
    return order.to(base.device)


def flow_matching_loss(
    model: FlowMatchingModel,
    batch: Tensor,
    generator: torch.Generator,
    coupling: Coupling = DEFAULT_COUPLING,
) -> LossOutput:
    """Mean squared error per coordinate between ``f(t, x_t)`` and ``(z - y) / T``.

    ``batch``: data points ``(B, D)`` in data coordinates. Draws ``z`` then ``t`` from ``generator``
    (in that order, so a resumed run draws the same numbers).
    """
    y = model.standardise(batch)
    z = standard_normal(tuple(y.shape), generator, y.dtype, y.device)
    if coupling == "ot":
        z = z[ot_permutation(z, y)]
    fraction = torch.rand(y.shape[0], generator=generator, device=generator.device).to(y)
    end = model.end_time.detach().to(y)
    x_t = torch.lerp(y, z, fraction.unsqueeze(1))
    target = (z - y) / end
    residual = model.velocity(fraction * end, x_t) - target
    loss = residual.square().mean()
    stats = {"fm_loss": float(loss.detach()), "end_time": float(end)}
    return LossOutput(loss=loss, stats=stats)


def objective_loss(
    model: DensityModel, objective: str, coupling: Coupling | None = None
) -> Callable[[Any, torch.Generator, int], LossOutput]:
    """The per-step loss ``(batch, generator, iteration) -> LossOutput`` of a training objective.

    Raises:
        ConfigError: ``model`` does not list ``objective`` in its ``objectives``.
    """
    if objective not in model.objectives:
        raise ConfigError(
            f"model {model.name} cannot train with objective {objective!r}",
            value=objective,
            fix=f"use training.objective one of: {', '.join(model.objectives)}",
            field="training.objective",
        )
    if objective == "likelihood":
        return model.training_loss
    pairing: Coupling = coupling or DEFAULT_COUPLING

    def loss(batch: Tensor, generator: torch.Generator, iteration: int) -> LossOutput:
        model.nfe.reset()
        model.nfe.forward = model.nfe.backward = 1  # one net evaluation, differentiated once
        return flow_matching_loss(model, batch, generator, pairing)  # type: ignore[arg-type]

    return loss

"""Divergence ``tr(df/dx)`` of the dynamics: the quantity a CNF integrates for its log-density.

Two estimators (FFJORD, arXiv:1810.01367, section 3):

* ``exact``: the trace of the exact Jacobian. For one or two concat-squash hidden layers it has a
  closed form (:mod:`service.ml.trace`: one ``O(H^2)`` bilinear form per point); otherwise
  :class:`~service.ml.nets.ODENet` carries the Jacobian forward through its layers, about ``D + 1``
  forward passes and no autograd.
* ``hutchinson``: ``e^T (df/dx) e`` with noise ``e`` fixed for one solve (Gaussian or Rademacher);
  unbiased, one vector-Jacobian product per evaluation, the choice for large ``D``.

``brute_force_divergence`` (one autograd pass per dimension) is the reference used by the tests.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["brute_force_divergence", "hutchinson_divergence", "sample_noise", "standard_normal"]

NoiseKind = Literal["gaussian", "rademacher"]


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where to draw: on the generator's own device, so that training's CPU generator (whose state
    is checkpointed) also drives a model on CUDA, and one seed gives one stream on every device."""
    return generator.device if generator is not None else device


def standard_normal(
    shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``N(0, I)`` draws of shape ``shape`` on ``device``, from ``generator`` wherever it lives."""
    draws = torch.randn(shape, generator=generator, dtype=dtype, device=_draw_device(generator, device))
    return draws.to(device)


def sample_noise(
    shape: tuple[int, ...], kind: NoiseKind, generator: torch.Generator | None, like: Tensor
) -> Tensor:
    """Hutchinson probe vectors with ``E[e e^T] = I``, shape ``shape``, on ``like``'s device."""
    if kind == "gaussian":
        return standard_normal(shape, generator, like.dtype, like.device)
    bits = torch.randint(0, 2, shape, generator=generator, device=_draw_device(generator, like.device))
    return (bits.to(like.dtype) * 2 - 1).to(like.device)


def hutchinson_divergence(f: Tensor, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Returns ``(e^T J e, |e^T J|^2)``, each shape ``(B,)``; ``f`` must be computed from ``x``."""
    (vjp,) = torch.autograd.grad(f, x, noise, create_graph=True)
    return (vjp * noise).sum(dim=-1), (vjp * vjp).sum(dim=-1)


def brute_force_divergence(f: Tensor, x: Tensor) -> Tensor:
    """Exact ``tr(df/dx)`` by ``D`` autograd passes; shapes ``(B, D)`` -> ``(B,)``."""
    total = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(f.shape[1]):
        (row,) = torch.autograd.grad(f[:, i].sum(), x, create_graph=True)
        total = total + row[:, i]
    return total

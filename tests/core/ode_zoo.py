"""ODEs with exact solutions, shared by the tests of both solvers (torchdiffeq's and the lean one)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Zoo = list[tuple[str, nn.Module, Tensor, Callable[[Tensor], Tensor]]]


class Linear(nn.Module):
    """dy/dt = A y, exact solution expm(A t) y0; ``A`` is a parameter (adjoint gradients reach it)."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return y @ self.a.T


class TimeDependent(nn.Module):
    """dy/dt = cos(t) y, exact solution y0 exp(sin t)."""

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.cos(t).to(y) * y


def zoo(y0: Tensor) -> Zoo:
    """``(name, dynamics, y0, exact solution at t)`` for decay, rotation and a time-dependent rate."""
    decay = torch.tensor([[-0.7, 0.0], [0.0, -1.3]], dtype=y0.dtype)
    rotation = torch.tensor([[0.0, -2.0], [2.0, 0.0]], dtype=y0.dtype)
    return [
        ("exponential", Linear(decay), y0, lambda t: y0 @ torch.linalg.matrix_exp(decay * t).T),
        ("rotation", Linear(rotation), y0, lambda t: y0 @ torch.linalg.matrix_exp(rotation * t).T),
        ("time_dependent", TimeDependent(), y0, lambda t: y0 * torch.exp(torch.sin(t))),
    ]

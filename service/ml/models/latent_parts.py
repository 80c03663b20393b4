"""Building blocks of the latent ODE (Rubanova et al., arXiv:1907.03907; Chen et al., arXiv:1806.07366).

* :class:`LatentDynamics`: the autonomous latent vector field ``dz/dt = f(z)``.
* :class:`RecognitionRNN`: runs backwards in time over the observed prefix of each series (a GRU, or
  an ODE-RNN that also evolves its hidden state between observations) and returns ``q(z0)``.
* :func:`solve_on_grid`: solves the latent ODE from ``t = 0`` to a sorted grid that may extend to
  negative times.
* Gaussian log-density with masks, KL to the standard normal prior, gathering of a union-grid
  solution back to each series' own times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from service.ml.models.base import LOG_2PI
from service.ml.ode import NfeCounter, SolverConfig, solve
from service.ml.series import Series

__all__ = [
    "LatentDynamics",
    "RecognitionRNN",
    "first_observed",
    "gather_times",
    "last_observed",
    "level_statistics",
    "masked_gaussian_log_density",
    "mlp",
    "normal_kl",
    "normal_log_density",
    "solve_on_grid",
]


def mlp(dim_in: int, hidden: tuple[int, ...], dim_out: int) -> nn.Sequential:
    """``dim_in -> hidden... -> dim_out`` with tanh between layers."""
    dims = [dim_in, *hidden, dim_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class LatentDynamics(nn.Module):
    """``f(t, z) = net(z)`` for ``z`` of shape (N, L); autonomous, as in Chen et al.'s spiral model."""

    def __init__(self, latent_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp(latent_dim, hidden, latent_dim)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(z)


class _RescaledDynamics(nn.Module):
    """``dh/ds = -delta * f(h)``, ``s`` in [0, 1]: moves each row back by its own gap ``delta`` (N, 1).

    An autonomous ODE rescaled in time, so rows with different gaps share one solve.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.delta: Tensor | None = None

    def forward(self, s: Tensor, h: Tensor) -> Tensor:
        assert self.delta is not None
        return -self.delta * self.net(h)


class RecognitionRNN(nn.Module):
    """Encoder ``q(z0 | x_{1..n})``, run from the last observed point back to the first (t = 0).

    Inputs per step: values (masked to 0), the channel mask and the gap to the next observed point.
    With ``ode_rnn`` the hidden state is also evolved by a neural ODE across each gap (Rubanova et
    al., Sec. 3.3), solved with the core's ``solve``.
    """

    def __init__(
        self, dim: int, hidden: int, latent_dim: int, ode_rnn: bool, ode_hidden: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.cell = nn.GRUCell(2 * dim + 1, hidden)
        self.to_posterior = nn.Linear(hidden, 2 * latent_dim)
        self.hidden = hidden
        self.evolve = _RescaledDynamics(mlp(hidden, ode_hidden, hidden)) if ode_rnn else None

    def forward(
        self,
        values: Tensor,
        mask: Tensor,
        tau: Tensor,
        observed: Tensor,
        solver: SolverConfig,
        counter: NfeCounter,
    ) -> tuple[Tensor, Tensor]:
        """``values``, ``mask`` (B, T, D); ``tau`` (B, T) scaled times; ``observed`` (B, T) bool prefix.

        Returns the posterior mean and standard deviation, each (B, L).
        """
        n_obs = observed.sum(1, keepdim=True)
        gaps = torch.cat([tau[:, 1:] - tau[:, :-1], tau[:, :1] * 0], dim=1)  # (B, T)
        h = values.new_zeros(observed.shape[0], self.hidden)
        span = values.new_tensor([0.0, 1.0])
        nfe_forward = nfe_backward = 0
        for j in range(int(n_obs.max()) - 1, -1, -1):
            has_next = j + 1 < n_obs  # (B, 1)
            gap = torch.where(has_next, gaps[:, j : j + 1], torch.zeros_like(has_next, dtype=h.dtype))
            if self.evolve is not None and bool(has_next.any()):
                self.evolve.delta = gap
                h = solve(self.evolve, h, span, solver, counter)[-1]
                nfe_forward, nfe_backward = nfe_forward + counter.forward, nfe_backward + counter.backward
            inputs = torch.cat([values[:, j] * mask[:, j], mask[:, j], gap], dim=-1)
            h = torch.where(observed[:, j : j + 1], self.cell(inputs, h), h)
        counter.forward, counter.backward = nfe_forward, nfe_backward
        mean, raw_std = self.to_posterior(h).chunk(2, dim=-1)
        return mean, nn.functional.softplus(raw_std) + 1e-4


def solve_on_grid(
    func: nn.Module, z0: Tensor, grid: Tensor, solver: SolverConfig, counter: NfeCounter
) -> Tensor:
    """States at every time of a sorted ``grid`` (G,) that contains 0, from ``z0`` (N, L) at ``t = 0``.

    Times before 0 are reached by a second, backward solve. Returns (G, N, L). The counter holds the
    summed NFE of both solves.
    """
    zero = int(torch.searchsorted(grid, grid.new_zeros(())))
    parts: list[Tensor] = []
    forward = backward = 0
    if zero > 0:
        past = solve(func, z0, grid[: zero + 1].flip(0), solver, counter)
        parts.append(past.flip(0)[:-1])
        forward, backward = counter.forward, counter.backward
    if zero < grid.shape[0] - 1:
        parts.append(solve(func, z0, grid[zero:], solver, counter))
    else:
        parts.append(z0.unsqueeze(0))
    counter.forward += forward
    counter.backward += backward
    return torch.cat(parts, dim=0)


def gather_times(states: Tensor, index: Tensor) -> Tensor:
    """Pick each series' times from a union-grid solution.

    ``states`` (G, K, B, L) for K samples of B series, ``index`` (B, T) positions in the grid;
    returns (K, B, T, L).
    """
    grid, samples, batch, latent = states.shape
    moved = states.permute(1, 2, 0, 3)  # (K, B, G, L)
    index = index.view(1, batch, -1, 1).expand(samples, batch, index.shape[1], latent)
    return torch.gather(moved, 2, index)


def masked_gaussian_log_density(x: Tensor, mean: Tensor, std: float, mask: Tensor) -> Tensor:
    """``sum log N(x; mean, std^2)`` over masked entries: x, mask (B, T, D), mean (K, B, T, D) -> (K, B)."""
    z = (x - mean) / std
    log_density = -0.5 * (z.square() + LOG_2PI) - math.log(std)
    return (log_density * mask).sum(dim=(-2, -1))


def normal_kl(mean: Tensor, std: Tensor) -> Tensor:
    """``KL(N(mean, diag std^2) || N(0, I))`` per row: (B, L) -> (B,)."""
    return 0.5 * (mean.square() + std.square() - 1 - 2 * std.log()).sum(-1)


def normal_log_density(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``log N(z; mean, diag std^2)`` summed over the last axis."""
    return (-0.5 * (((z - mean) / std).square() + LOG_2PI) - std.log()).sum(-1)


def first_observed(prefix: Tensor) -> Tensor:
    """1 at each channel's first observed prefix entry, 0 elsewhere: (B, T, D) -> (B, T, D)."""
    length = prefix.shape[1]
    position = torch.arange(length, device=prefix.device).view(1, -1, 1)
    first = torch.where(prefix > 0, position, length).argmin(1, keepdim=True)  # (B, 1, D)
    seen = (prefix.sum(1, keepdim=True) > 0).to(prefix.dtype)
    return (position == first).to(prefix.dtype) * seen


def level_statistics(series: Sequence[Series]) -> tuple[Tensor, Tensor]:
    """Per channel, how much series differ in level and how well a level persists, (D,) each.

    Each series is cut at half its time span. ``share``: the part of the first halves' variance
    that lies between their means (near 1 when series differ mostly in level). ``drift``: the mean
    squared change of a series' mean from its first half to its second, over the variance of the
    first-half means (near 0 when a level, once there, stays). Channels without data get share 0.
    """
    dim = series[0].values.shape[1]
    firsts: list[list[float]] = [[] for _ in range(dim)]
    seconds: list[list[float]] = [[] for _ in range(dim)]
    within: list[list[float]] = [[] for _ in range(dim)]
    for s in series:
        mid = s.times[0] + (s.times[-1] - s.times[0]) / 2
        early = (s.times <= mid).unsqueeze(-1) & (s.mask > 0)
        late = (s.times > mid).unsqueeze(-1) & (s.mask > 0)
        for c in range(dim):
            a, b = s.values[early[:, c], c], s.values[late[:, c], c]
            if len(a) and len(b):
                firsts[c].append(float(a.mean()))
                seconds[c].append(float(b.mean()))
                within[c].append(float(a.var(unbiased=False)))
    share, drift = torch.zeros(dim), torch.full((dim,), math.inf)
    for c in range(dim):
        if len(firsts[c]) < 2:
            continue
        first, second = torch.tensor(firsts[c]), torch.tensor(seconds[c])
        between = float(first.var(unbiased=False))
        total = between + float(torch.tensor(within[c]).mean())
        if total > 0 and between > 0:
            share[c] = between / total
            drift[c] = float((second - first).square().mean()) / between
    return share, drift


def last_observed(values: Tensor, prefix: Tensor, fill: Tensor) -> Tensor:
    """Last observed prefix value of each channel, broadcast over time: (B, T, D) -> (B, T, D).

    ``prefix`` (B, T, D) masks the observed prefix entries; a channel never observed gets ``fill`` (D,).
    """
    length = values.shape[1]
    position = torch.arange(length, device=values.device).view(1, -1, 1) * prefix
    last = torch.gather(values, 1, position.argmax(1, keepdim=True).long())
    seen = prefix.sum(1, keepdim=True) > 0
    return torch.where(seen, last, fill).expand_as(values)

"""The eight 2-D toy densities of FFJORD (Grathwohl et al., arXiv:1810.01367, Fig. 2 and its code).

Each sampler is ``fn(n, generator) -> Tensor (n, 2) float32``. Randomness comes only from the given
``torch.Generator``, so the same generator state gives the same points. The constructions follow the
reference ``toy_data.py`` (which calls scikit-learn for swissroll, circles and moons; those are
re-derived here from scikit-learn's definitions). Two differences, both about row order and counts:
every sampler returns exactly ``n`` rows (the reference drops ``n mod 5`` pinwheel and ``n mod 2``
spiral points), and rows come in random order, so any prefix is a fair sample.

Exact log-densities are given for the two toys that have a closed form: ``8gaussians`` (an
equal-weight mixture of 8 isotropic Gaussians) and ``checkerboard`` (uniform on 8 squares).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from service.ml.errors import DataError

__all__ = [
    "TOY_SAMPLERS",
    "checkerboard",
    "checkerboard_log_prob",
    "circles",
    "gaussians8",
    "gaussians8_entropy",
    "gaussians8_log_prob",
    "moons",
    "pinwheel",
    "rings",
    "swissroll",
    "two_spirals",
]

_GAUSS8_SCALE = 4.0
_GAUSS8_STD = 0.5
_GAUSS8_DIVISOR = 1.414  # the reference divides by 1.414, not sqrt(2); kept for comparability
_CHECKER_LOG_DENSITY = -math.log(32.0)  # 8 squares of side 2


def _shuffle(points: Tensor, generator: torch.Generator) -> Tensor:
    return points[torch.randperm(points.shape[0], generator=generator)]


def _open_linspace(stop: float, steps: int) -> Tensor:
    """``steps`` points on ``[0, stop)``, like ``numpy.linspace(..., endpoint=False)``."""
    return torch.linspace(0.0, stop, steps + 1, dtype=torch.float64)[:-1]


def _balanced_labels(n: int, classes: int, generator: torch.Generator) -> Tensor:
    """Class labels with counts differing by at most one, in random order. Shape ``(n,)``."""
    return torch.arange(n)[torch.randperm(n, generator=generator)] % classes


def swissroll(n: int, generator: torch.Generator) -> Tensor:
    """scikit-learn's ``make_swiss_roll(noise=1.0)``, coordinates ``(x, z)``, divided by 5."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, dtype=torch.float64))
    points = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    points = points + torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (points / 5).float()


def circles(n: int, generator: torch.Generator) -> Tensor:
    """``make_circles(factor=0.5, noise=0.08)`` times 3: radii 3 and 1.5, evenly spaced angles."""
    n_out = n // 2
    outer = _open_linspace(2 * math.pi, n_out)
    inner = _open_linspace(2 * math.pi, n - n_out)
    radius = torch.cat(
        [torch.ones(n_out, dtype=torch.float64), torch.full((n - n_out,), 0.5, dtype=torch.float64)]
    )
    angle = torch.cat([outer, inner])
    points = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    points = _shuffle(points, generator) + 0.08 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (3 * points).float()


def moons(n: int, generator: torch.Generator) -> Tensor:
    """``make_moons(noise=0.1)`` mapped by ``2 x + (-1, -0.2)`` into about ``[-3, 5] x [-2, 2]``."""
    n_out = n // 2
    t_out = torch.linspace(0, math.pi, n_out, dtype=torch.float64)
    t_in = torch.linspace(0, math.pi, n - n_out, dtype=torch.float64)
    outer = torch.stack([torch.cos(t_out), torch.sin(t_out)], dim=1)
    inner = torch.stack([1 - torch.cos(t_in), 1 - torch.sin(t_in) - 0.5], dim=1)
    points = _shuffle(torch.cat([outer, inner]), generator)
    points = points + 0.1 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (2 * points + torch.tensor([-1.0, -0.2], dtype=torch.float64)).float()


def _gauss8_centers(dtype: torch.dtype = torch.float64) -> Tensor:
    """The 8 centres before the final division: ``4 * c`` for unit vectors ``c``. Shape ``(8, 2)``."""
    r = 1 / math.sqrt(2)
    unit = [(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)]
    return _GAUSS8_SCALE * torch.tensor(unit, dtype=dtype)


def gaussians8(n: int, generator: torch.Generator) -> Tensor:
    """``(4 c_k + 0.5 N(0, I)) / 1.414`` with ``k`` uniform over the 8 compass directions."""
    noise = _GAUSS8_STD * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    k = torch.randint(0, 8, (n,), generator=generator)
    return ((_gauss8_centers()[k] + noise) / _GAUSS8_DIVISOR).float()


def gaussians8_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of :func:`gaussians8`: ``(B, 2) -> (B,)`` in the dtype of ``x``.

    Mixture of 8 equal-weight ``N(4 c_k / 1.414, (0.5 / 1.414)^2 I)``.
    """
    _check_2d(x)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    xd = x.to(torch.float64)
    mu = _gauss8_centers() / _GAUSS8_DIVISOR
    var = (_GAUSS8_STD / _GAUSS8_DIVISOR) ** 2
    sq = ((xd[:, None, :] - mu[None]) ** 2).sum(-1)
    log_norm = math.log(8.0) + math.log(2 * math.pi * var)
    return (torch.logsumexp(-0.5 * sq / var, dim=1) - log_norm).to(dtype)


@functools.cache
def gaussians8_entropy() -> float:
    """Differential entropy of :func:`gaussians8` in nats (about 2.833), by quadrature.

    The trapezoid rule converges geometrically for this smooth, rapidly decaying integrand: a 241^2
    grid over ``[-6, 6]^2`` (spacing 0.05; component std 0.354) agrees with a 2801^2 grid to 1e-15.
    """
    axis = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    log_p = gaussians8_log_prob(torch.stack([xx.flatten(), yy.flatten()], dim=1)).view(xx.shape)
    integrand = -log_p.exp() * log_p
    return float(torch.trapezoid(torch.trapezoid(integrand, axis, dim=1), axis))


def pinwheel(n: int, generator: torch.Generator) -> Tensor:
    """5 arms; radial std 0.3, tangential std 0.1, rate 0.25; scaled by 2."""
    arms, rate = 5, 0.25
    features = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    features = features * torch.tensor([0.3, 0.1], dtype=torch.float64)
    features[:, 0] += 1.0
    labels = _balanced_labels(n, arms, generator)
    angles = labels * (2 * math.pi / arms) + rate * torch.exp(features[:, 0])
    cos, sin = torch.cos(angles), torch.sin(angles)
    # Row vector times [[cos, -sin], [sin, cos]], as the reference's einsum("ti,tij->tj").
    x = features[:, 0] * cos + features[:, 1] * sin
    y = -features[:, 0] * sin + features[:, 1] * cos
    return (2 * torch.stack([x, y], dim=1)).float()


def two_spirals(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved 1.5-turn spirals (point-symmetric), divided by 3, plus 0.1 N(0, I)."""
    turn = torch.sqrt(torch.rand(n, generator=generator, dtype=torch.float64)) * 3 * math.pi
    jitter = 0.5 * torch.rand(n, 2, generator=generator, dtype=torch.float64)
    arm = torch.stack([-torch.cos(turn) * turn, torch.sin(turn) * turn], dim=1) + jitter
    sign = 1.0 - 2.0 * _balanced_labels(n, 2, generator).to(torch.float64)
    points = sign[:, None] * arm / 3
    points = points + 0.1 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return points.float()


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """``2 * (x1, x2)`` with ``x1 ~ U[-2, 2)``, ``x2 = U[0, 1) - 2 * {0, 1} + (floor(x1) mod 2)``."""
    x1 = 4 * torch.rand(n, generator=generator, dtype=torch.float64) - 2
    x2 = torch.rand(n, generator=generator, dtype=torch.float64)
    x2 = x2 - 2 * torch.randint(0, 2, (n,), generator=generator) + torch.remainder(torch.floor(x1), 2)
    return (2 * torch.stack([x1, x2], dim=1)).float()


def checkerboard_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of :func:`checkerboard`: ``(B, 2) -> (B,)``.

    Uniform on the 8 cells of side 2 in ``[-4, 4)^2`` whose ``floor(x/2) + floor(y/2)`` is even:
    ``-log 32`` there, ``-inf`` elsewhere.
    """
    _check_2d(x)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    xd = x.to(torch.float64)
    inside = ((xd >= -4) & (xd < 4)).all(dim=1)
    even = torch.remainder(torch.floor(xd / 2).sum(dim=1), 2) == 0
    out = torch.full((x.shape[0],), -math.inf, dtype=dtype)
    return out.masked_fill(inside & even, _CHECKER_LOG_DENSITY)


def rings(n: int, generator: torch.Generator) -> Tensor:
    """4 concentric rings of radii 3, 2.25, 1.5, 0.75 (evenly spaced angles) plus 0.08 N(0, I)."""
    quarter = n // 4
    counts = [quarter, quarter, quarter, n - 3 * quarter]
    radii = [3.0, 2.25, 1.5, 0.75]
    angle = torch.cat([_open_linspace(2 * math.pi, c) for c in counts])
    radius = torch.cat([torch.full((c,), r, dtype=torch.float64) for c, r in zip(counts, radii, strict=True)])
    points = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    points = _shuffle(points, generator) + 0.08 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return points.float()


def _check_2d(x: Tensor) -> None:
    if x.dim() != 2 or x.shape[1] != 2:
        raise DataError(
            f"expected points of shape (B, 2), got {tuple(x.shape)}",
            value=tuple(x.shape),
            fix="pass a (B, 2) tensor of 2-D points",
        )


TOY_SAMPLERS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "swissroll": swissroll,
    "8gaussians": gaussians8,
    "pinwheel": pinwheel,
    "circles": circles,
    "moons": moons,
    "2spirals": two_spirals,
    "checkerboard": checkerboard,
    "rings": rings,
}

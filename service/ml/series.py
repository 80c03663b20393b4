"""Irregularly sampled time series for the latent ODE (Rubanova et al., arXiv:1907.03907).

A :class:`Series` is one trajectory: strictly increasing float64 ``times`` ``(T,)``, ``values``
``(T, D)`` and a per-channel ``mask`` ``(T, D)`` (1 observed, 0 missing). Its first ``n_observed``
points are what an encoder sees; the rest is the held-out tail a model must extrapolate.
:func:`collate` pads series with different lengths and time grids into one :class:`SeriesBatch`;
:class:`SeriesData` is the train/test container that ``fit`` consumes (``.batch``, ``.test``,
``.dim``, ``kind == "series"``); ``with_validation`` moves a share of its training series to ``val``,
on which ``fit`` decides when to stop.

Built-in generators, registered in ``SERIES_DATASETS``:

* ``spirals``: two-arm Archimedean spirals, one arm traversed clockwise and one counter-clockwise,
  observed irregularly with noise; the encoder sees the first half of each window and the model
  predicts the second half (the spiral experiment of Chen et al., arXiv:1806.07366, Sec. 5.1).
* ``periodic``: sine waves with random frequency, amplitude and phase, irregularly sampled with
  noise (the toy data of Rubanova et al., Sec. 4.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor

from service.ml.errors import DataError, UnknownNameError

__all__ = [
    "MAX_VALIDATION_SERIES",
    "MIN_SPLIT_SERIES",
    "SERIES_DATASETS",
    "Series",
    "SeriesBatch",
    "SeriesData",
    "SeriesSpec",
    "collate",
    "load_series_dataset",
    "make_periodic",
    "make_series",
    "make_spirals",
    "series_data_from_list",
]

MAX_VALIDATION_SERIES = 256
"""Validation series used at most: enough for a stable forecast error, cheap to evaluate often."""
MIN_SPLIT_SERIES = 5
"""Fewer training series than this are all trained on (no validation split, no early stopping)."""


@dataclass(frozen=True)
class Series:
    """One trajectory: ``times`` (T,), ``values`` (T, D), ``mask`` (T, D); encoder sees ``n_observed``."""

    times: Tensor
    values: Tensor
    mask: Tensor
    n_observed: int

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])


def make_series(
    times: Tensor, values: Tensor, mask: Tensor | None = None, observed_fraction: float = 1.0
) -> Series:
    """A ``Series`` whose encoder part is the points within ``observed_fraction`` of its time span.

    At least one point is always observed. Inputs are assumed valid (see ``service.ml.series_io``
    for validation of user data); values at masked entries are zeroed.
    """
    times = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    values = torch.as_tensor(values, dtype=torch.float32).reshape(times.shape[0], -1)
    mask = torch.ones_like(values) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
    cut = times[0] + observed_fraction * (times[-1] - times[0])
    n_observed = max(1, int((times <= cut + 1e-9 * (1 + cut.abs())).sum()))
    return Series(times, values * mask, mask, n_observed)


@dataclass(frozen=True)
class SeriesBatch:
    """Series of different lengths and time grids padded to a common length ``T``.

    Shapes: ``times`` (B, T) float64 (absolute times keep their precision), padded by repeating
    the last valid time so rows stay sorted; ``values`` (B, T, D), zero where missing or padding;
    ``mask`` (B, T, D) float, 1 where a value is observed; ``valid`` (B, T) bool, a real point (not
    padding); ``observed`` (B, T) bool, a valid point inside the encoder prefix. The extrapolation
    targets are ``valid & ~observed``.
    """

    times: Tensor
    values: Tensor
    mask: Tensor
    valid: Tensor
    observed: Tensor

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def dim(self) -> int:
        return int(self.values.shape[-1])

    def to(self, like: Tensor) -> SeriesBatch:
        """Values and masks moved to ``like``'s dtype and device; times stay float64."""
        return SeriesBatch(
            self.times.to(like.device),
            self.values.to(like),
            self.mask.to(like),
            self.valid.to(like.device),
            self.observed.to(like.device),
        )

    def tail_mask(self) -> Tensor:
        """(B, T, D) float mask of the observed values of the held-out tail."""
        return self.mask * (self.valid & ~self.observed).unsqueeze(-1).to(self.mask)

    def prefix_mask(self) -> Tensor:
        """(B, T, D) float mask of the observed values the encoder sees."""
        return self.mask * self.observed.unsqueeze(-1).to(self.mask)


def collate(series: Sequence[Series]) -> SeriesBatch:
    """Pad ``series`` (any lengths and time grids, same ``D``) into one :class:`SeriesBatch`."""
    if not series:
        raise DataError("no series to batch", fix="pass at least one series", field="series")
    dims = {s.dim for s in series}
    if len(dims) != 1:
        raise DataError(
            f"series in one batch have different dimensions {sorted(dims)}",
            value=sorted(dims),
            fix="give every series the same number of value columns",
            field="series",
        )
    batch, length, dim = len(series), max(len(s) for s in series), dims.pop()
    times = torch.zeros(batch, length, dtype=torch.float64)
    values = torch.zeros(batch, length, dim)
    mask = torch.zeros(batch, length, dim)
    valid = torch.zeros(batch, length, dtype=torch.bool)
    observed = torch.zeros(batch, length, dtype=torch.bool)
    for b, s in enumerate(series):
        n = len(s)
        times[b, :n] = s.times
        times[b, n:] = s.times[-1]
        values[b, :n] = s.values
        mask[b, :n] = s.mask
        valid[b, :n] = True
        observed[b, : s.n_observed] = True
    return SeriesBatch(times, values, mask, valid, observed)


@dataclass
class SeriesData:
    """Train/validation/test series of one dataset; ``batch`` draws deterministically from a generator."""

    name: str
    train: list[Series]
    test: list[Series]
    description: str = ""
    val: list[Series] = field(default_factory=list)
    kind: ClassVar[str] = "series"

    def with_validation(self, fraction: float, seed: int) -> SeriesData:
        """A copy with ``fraction`` of the training series (at most ``MAX_VALIDATION_SERIES``) in ``val``.

        The split is a deterministic shuffle by ``seed``. Fewer than ``MIN_SPLIT_SERIES`` training
        series, or ``fraction == 0``, leave no validation series.
        """
        if fraction <= 0 or len(self.train) < MIN_SPLIT_SERIES or self.val:
            return self
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed + 1))
        n_val = min(MAX_VALIDATION_SERIES, max(1, round(fraction * len(self.train))))
        val = [self.train[i] for i in order[:n_val].tolist()]
        train = [self.train[i] for i in order[n_val:].tolist()]
        return replace(self, train=train, val=val)

    @property
    def dim(self) -> int:
        return self.train[0].dim

    def batch(self, batch_size: int, generator: torch.Generator) -> SeriesBatch:
        """``batch_size`` training series (without replacement when there are enough)."""
        n = len(self.train)
        if batch_size <= n:
            index = torch.randperm(n, generator=generator)[:batch_size]
        else:
            index = torch.randint(0, n, (batch_size,), generator=generator)
        return collate([self.train[int(i)] for i in index])


def series_data_from_list(
    name: str, series: Sequence[Series], seed: int = 0, test_fraction: float = 0.2
) -> SeriesData:
    """Shuffle ``series`` with ``seed`` and split off ``test_fraction`` of them (at least one each)."""
    if len(series) < 2:
        raise DataError(
            f"need at least 2 series for a train/test split, got {len(series)}",
            value=len(series),
            fix="upload more series",
            field="series",
        )
    if not 0 < test_fraction < 1:
        raise DataError(
            f"test_fraction must be in (0, 1), got {test_fraction}",
            value=test_fraction,
            fix="use e.g. 0.2",
            field="test_fraction",
        )
    order = torch.randperm(len(series), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = min(len(series) - 1, max(1, round(test_fraction * len(series))))
    test = [series[i] for i in order[:n_test]]
    train = [series[i] for i in order[n_test:]]
    return SeriesData(name=name, train=train, test=test)


def _subsample(grid_points: int, low: int, high: int, generator: torch.Generator) -> Tensor:
    """Sorted random subset of ``range(grid_points)`` of a random size in ``[low, high]``, with 0."""
    size = int(torch.randint(low, high + 1, (1,), generator=generator))
    rest = torch.randperm(grid_points - 1, generator=generator)[: size - 1] + 1
    return torch.cat([torch.zeros(1, dtype=torch.long), rest.sort().values])


def make_spirals(
    n_series: int = 1000,
    seed: int = 0,
    noise_std: float = 0.02,
    window: float = 4.0,
    grid_points: int = 100,
    points: tuple[int, int] = (30, 60),
    observed_fraction: float = 0.5,
) -> list[Series]:
    """Windows of a two-arm Archimedean spiral, ``r = 0.25 + 0.07 theta``, ``theta`` in ``[0, 4 pi]``.

    The counter-clockwise arm is centred at ``(+0.6, 0)``, the clockwise arm is its mirror image at
    ``(-0.6, 0)``; both are traversed outwards at unit angular speed. Each series is a window of
    ``window`` time units starting at a random angle, on a regular grid of ``grid_points`` of which a
    random subset (first point always kept) is observed with Gaussian noise. Times start at 0 and
    are multiples of the grid step, so batches share a small union grid. Values have shape (T, 2).
    """
    generator = torch.Generator().manual_seed(seed)
    step = window / (grid_points - 1)
    theta_max = 4 * math.pi
    out: list[Series] = []
    for _ in range(n_series):
        clockwise = bool(torch.rand(1, generator=generator) < 0.5)
        start = float(torch.rand(1, generator=generator)) * (theta_max - window)
        index = _subsample(grid_points, points[0], points[1], generator)
        times = index.to(torch.float64) * step
        theta = start + times
        radius = 0.25 + 0.07 * theta
        x = radius * torch.cos(theta)
        y = radius * torch.sin(theta)
        x = -x - 0.6 if clockwise else x + 0.6
        values = torch.stack([x, y], dim=-1).float()
        values = values + noise_std * torch.randn(values.shape, generator=generator)
        out.append(make_series(times, values, observed_fraction=observed_fraction))
    return out


def make_periodic(
    n_series: int = 1000,
    seed: int = 0,
    noise_std: float = 0.05,
    window: float = 5.0,
    grid_points: int = 100,
    points: tuple[int, int] = (20, 50),
    observed_fraction: float = 0.5,
) -> list[Series]:
    """``A sin(2 pi f t + phi)`` with ``f ~ U[0.2, 0.5]``, ``A ~ U[0.5, 1.5]``, ``phi ~ U[0, 2 pi]``.

    Irregular random subsets of a regular grid over ``[0, window]``, Gaussian noise; values (T, 1).
    """
    generator = torch.Generator().manual_seed(seed)
    step = window / (grid_points - 1)
    out: list[Series] = []
    for _ in range(n_series):
        freq, amp, phase = torch.rand(3, generator=generator).tolist()
        freq, amp, phase = 0.2 + 0.3 * freq, 0.5 + amp, 2 * math.pi * phase
        index = _subsample(grid_points, points[0], points[1], generator)
        times = index.to(torch.float64) * step
        values = (amp * torch.sin(2 * math.pi * freq * times + phase)).float().unsqueeze(-1)
        values = values + noise_std * torch.randn(values.shape, generator=generator)
        out.append(make_series(times, values, observed_fraction=observed_fraction))
    return out


@dataclass(frozen=True)
class SeriesSpec:
    """A built-in series dataset: ``build(n_series, seed)`` returns its series."""

    name: str
    dim: int
    description: str
    build: Callable[[int, int], list[Series]]
    n_series: int
    test_fraction: float = 0.2
    kind: str = "series"


SERIES_DATASETS: dict[str, SeriesSpec] = {
    "spirals": SeriesSpec(
        name="spirals",
        dim=2,
        description=(
            "Two-arm Archimedean spirals (clockwise and counter-clockwise), 1000 irregularly "
            "sampled windows, noise std 0.02; first half observed, second half extrapolated."
        ),
        build=lambda n, seed: make_spirals(n, seed),
        n_series=1000,
    ),
    "periodic": SeriesSpec(
        name="periodic",
        dim=1,
        description=(
            "Sine waves with random frequency, amplitude and phase, irregularly sampled, noise "
            "std 0.05; first half observed, second half extrapolated."
        ),
        build=lambda n, seed: make_periodic(n, seed),
        n_series=1000,
    ),
}


def load_series_dataset(name: str, seed: int = 0, n_series: int | None = None) -> SeriesData:
    """Generate the built-in series dataset ``name`` (deterministic in ``seed``)."""
    try:
        spec = SERIES_DATASETS[name]
    except KeyError:
        raise UnknownNameError("series dataset", name, list(SERIES_DATASETS)) from None
    series = spec.build(n_series or spec.n_series, seed)
    data = series_data_from_list(name, series, seed=seed, test_fraction=spec.test_fraction)
    data.description = spec.description
    return data

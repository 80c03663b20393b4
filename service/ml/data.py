"""Point datasets: the built-in registry ``DATASETS``, loading, and validation of user points.

Built-ins are the 2-D toys of FFJORD (arXiv:1810.01367; :mod:`service.ml.toy2d`), 1-D targets
with exact densities (:mod:`service.ml.mixtures1d`) and real tables bundled with scikit-learn
(``digits``, ``wine``, ``diabetes``; :mod:`service.ml.tabular`), which have one fixed, standardised
train/test split instead of a sampler. User data arrives as JSON rows
(:func:`points_from_rows`) or CSV (:func:`points_from_csv`); both validate everything and raise
:class:`DataError` naming the offending row or line and how to fix it. Parsing never evaluates text.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from service.ml import mixtures1d, tabular, toy2d
from service.ml.csv_text import csv_lines, decode_csv
from service.ml.errors import DataError, UnknownNameError

__all__ = [
    "DATASETS",
    "FLOAT32_OVERFLOW",
    "MAX_DIM",
    "MIN_CSV_POINTS",
    "DatasetSpec",
    "PointData",
    "load_dataset",
    "point_data_from_tensor",
    "points_from_csv",
    "points_from_rows",
]

MAX_DIM = 64
"""Most columns a user dataset or query may have (exact divergence costs ~D forward passes)."""
MIN_CSV_POINTS = 10
"""Fewest rows an uploaded CSV training set may have (a train/test split needs a few)."""
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
"""The smallest magnitude a float64 rounds to float32 infinity from: halfway between float32's
largest finite value, 2**128 - 2**104, and 2**128 (ties go to the even neighbour, infinity)."""


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in dataset: how to sample it and, when known, its exact density and entropy."""

    name: str
    kind: Literal["points", "series"]
    dim: int
    description: str
    sampler: Callable[[int, torch.Generator], Tensor]  # (n, dim) float32
    true_log_prob: Callable[[Tensor], Tensor] | None = None  # (B, dim) -> (B,)
    entropy: float | None = None  # differential entropy, nats
    fixed_split: bool = False  # a real table: one fixed train/test split, no sampling (``tabular``)


@dataclass(frozen=True, eq=False)
class PointData:
    """Train/test points ``(N, D)`` float32, plus the true density when the source is known."""

    name: str
    train: Tensor
    test: Tensor
    true_log_prob: Callable[[Tensor], Tensor] | None = None
    entropy: float | None = None
    val: Tensor | None = None  # validation points split off ``train`` (``with_validation_points``)
    # A dequantised table: each training row's cell corner (N, D) and the cell widths (D,); batches
    # re-draw the noise inside the cell (``tabular``). None: ``train`` as it is.
    cells: Tensor | None = None
    cell_width: Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def kind(self) -> str:
        return "points"

    def with_validation_points(self, n_val: int, seed: int) -> PointData:
        """A copy with ``n_val`` training points (at most half of them), chosen by ``seed``, in ``val``."""
        if self.val is not None or n_val < 1 or self.train.shape[0] < 2:
            return self
        n_val = min(n_val, self.train.shape[0] // 2)
        order = torch.randperm(self.train.shape[0], generator=torch.Generator().manual_seed(seed))
        order = order.to(self.train.device)
        cells = None if self.cells is None else self.cells[order[n_val:]]
        return dataclasses.replace(
            self, train=self.train[order[n_val:]], val=self.train[order[:n_val]], cells=cells
        )

    def batch(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``(batch_size, D)`` rows of ``train`` drawn uniformly with replacement (a dequantised
        table: the rows' cells with fresh uniform noise)."""
        if batch_size < 1:
            raise DataError(
                f"batch_size must be >= 1, got {batch_size}", value=batch_size, fix="use 1 or more"
            )
        idx = torch.randint(0, self.train.shape[0], (batch_size,), generator=generator)
        if self.cells is None or self.cell_width is None:
            return self.train[idx]
        noise = torch.rand((batch_size, self.dim), generator=generator).to(self.cells)
        return self.cells[idx] + noise * self.cell_width.to(self.cells)


def _toy(name: str, description: str, **extra: object) -> DatasetSpec:
    return DatasetSpec(name, "points", 2, description, toy2d.TOY_SAMPLERS[name], **extra)  # type: ignore[arg-type]


def _table(name: str) -> DatasetSpec:
    spec = tabular.TABULAR[name]

    def resample(n: int, generator: torch.Generator) -> Tensor:  # rows of the fixed training split
        train = tabular.load_tabular(name).train
        return train[torch.randint(0, train.shape[0], (n,), generator=generator)]

    return DatasetSpec(name, "points", spec.dim, spec.description, resample, fixed_split=True)


def _beta(name: str, description: str) -> DatasetSpec:
    mix = mixtures1d.MIXTURES[name]
    return DatasetSpec(name, "points", 1, description, mix.sample, mix.log_prob, mix.entropy())


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        _toy("swissroll", "Swiss roll (x, z) with noise 1, divided by 5."),
        _toy(
            "8gaussians",
            "8 Gaussians (std 0.354) on a circle of radius 2.83; exact density known.",
            true_log_prob=toy2d.gaussians8_log_prob,
            entropy=toy2d.gaussians8_entropy(),
        ),
        _toy("pinwheel", "Pinwheel with 5 arms (radial std 0.3, tangential std 0.1, rate 0.25)."),
        _toy("circles", "Two concentric circles of radii 3 and 1.5, noise 0.24."),
        _toy("moons", "Two interleaving half-moons, noise 0.2."),
        _toy("2spirals", "Two interleaved spirals, noise 0.1."),
        _toy(
            "checkerboard",
            "Uniform on 8 alternating 2x2 squares of [-4, 4]^2; exact density known.",
            true_log_prob=toy2d.checkerboard_log_prob,
            entropy=math.log(32),  # uniform on 8 squares of area 4
        ),
        _toy("rings", "Four concentric rings of radii 0.75 to 3, noise 0.08."),
        _beta("beta_1", "Beta(1, 1) + 0.75: uniform on [0.75, 1.75]."),
        _beta("beta_2", "Mixture of Beta(1,1) - 2, Beta(3,3), Beta(5,2) + 0.5."),
        _beta("beta_3", "Mixture of Beta(1,1) - 2, Beta(5,1) - 1, Beta(3,3), Beta(5,2) + 0.5."),
        _beta("beta_4", "Mixture of four Beta(0.5,0.5) arcsine laws shifted by -2, -1, -0.1, 1."),
        DatasetSpec(
            "normal_1d",
            "points",
            1,
            "Normal(6, 0.7^2).",
            mixtures1d.normal_1d,
            mixtures1d.normal_1d_log_prob,
            mixtures1d.NORMAL_1D_ENTROPY,
        ),
        *(_table(name) for name in tabular.TABULAR),
    ]
}
"""Built-in datasets by name (keys feed API enums and CLI help)."""


def _generator(seed: int, stream: int) -> torch.Generator:
    # Distinct seeds per (seed, stream) pair, so train and test never share random numbers.
    return torch.Generator().manual_seed(2 * seed + stream)


def load_dataset(name: str, seed: int = 0, n_train: int = 20_000, n_test: int = 5_000) -> PointData:
    """Sample the built-in dataset ``name``: train ``(n_train, D)``, test ``(n_test, D)``, float32.

    Deterministic in ``seed``; train and test come from independent generator streams. A real table
    (``fixed_split``) ignores ``seed`` and keeps at most ``n_train``/``n_test`` rows of its split.
    """
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, list(DATASETS))
    for label, value in (("n_train", n_train), ("n_test", n_test)):
        if value < 1:
            raise DataError(
                f"{label} must be >= 1, got {value}", value=value, fix="use 1 or more", field=label
            )
    if seed < 0:
        raise DataError(
            f"seed must be >= 0, got {seed}", value=seed, fix="use a non-negative seed", field="seed"
        )
    spec = DATASETS[name]
    if spec.fixed_split:
        split = tabular.load_tabular(name, n_train, n_test)
        return PointData(name, split.train, split.test, cells=split.train_cells, cell_width=split.cell_width)
    train = spec.sampler(n_train, _generator(seed, 0))
    test = spec.sampler(n_test, _generator(seed, 1))
    return PointData(name, train, test, spec.true_log_prob, spec.entropy)


def _error(message: str, fix: str, field: str, value: object = None) -> DataError:
    return DataError(message, value=value, fix=fix, field=field)


def _python_number(cell: object) -> float | None:
    """A JSON number as float, or None for anything else (booleans, strings, nulls, lists)."""
    if type(cell) is float:  # JSON's common case, without the ABC check (~10x slower per cell)
        return cell
    if isinstance(cell, bool) or not isinstance(cell, numbers.Real):
        return None
    try:
        return float(cell)
    except OverflowError:  # an int beyond float64; reported as out of range below
        return math.inf


_NUMBER = re.compile(r"\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf|infinity)\s*", re.IGNORECASE)


def _text_number(cell: object) -> float | None:
    """A CSV cell as float, or None unless it is a decimal literal (``nan``/``inf`` pass; caught later)."""
    return float(cell) if isinstance(cell, str) and _NUMBER.fullmatch(cell) else None


def _tabulate(
    rows: Sequence[Sequence[object]],
    labels: Sequence[str],
    width: tuple[str, int],
    number: Callable[[object], float | None],
    *,
    col_base: int,
    field: str,
    max_dim: int,
    min_points: int,
    max_points: int | None,
) -> Tensor:
    """Check rows against one width, convert cells with ``number``, return ``(N, D)`` float32.

    ``labels[i]`` names row ``i`` in messages ("row 3", "line 5"); ``width`` is (label, columns) of the
    row that sets the expected width.
    """
    ref, dim = width
    if dim == 0:
        raise _error(f"{ref} is empty", "give each point at least one coordinate", field)
    if dim > max_dim:
        raise _error(
            f"{ref} has {dim} values; at most {max_dim} are allowed",
            f"use at most {max_dim} coordinates per point",
            field,
            dim,
        )
    values: list[list[float]] = []
    for label, row in zip(labels, rows, strict=True):
        if type(row) is not list and (isinstance(row, str | bytes) or not isinstance(row, Sequence)):
            raise _error(
                f"{label} is not a list of numbers", "send each point as a list", field, repr(row)[:80]
            )
        if len(row) != dim:
            fix = "give every point the same number of values"
            raise _error(f"{label} has {len(row)} values but {ref} has {dim} (ragged)", fix, field, len(row))
        parsed = [number(cell) for cell in row]
        if None in parsed:
            j = parsed.index(None)
            fix = "use plain decimal numbers such as -1.5 or 2e-3 (no text, booleans or nulls)"
            cell = repr(row[j])[:40] if str(row[j]).strip() else "empty"
            raise _error(
                f"{label}, column {j + col_base} is not a number: {cell}", fix, field, repr(row[j])[:80]
            )
        values.append(parsed)  # type: ignore[arg-type]
    n = len(values)
    if n < min_points:
        raise _error(
            f"got {n} points; at least {min_points} are needed", f"send {min_points} or more", field, n
        )
    if max_points is not None and n > max_points:
        raise _error(
            f"got {n} points; at most {max_points} are allowed", "send fewer or split them", field, n
        )
    # Checked in Python: a small query pays ~1 us here instead of ~20 us of tensor ops.
    cells = ((i, j, v) for i, row in enumerate(values) for j, v in enumerate(row))
    bad = next(((i, j, v) for i, j, v in cells if not abs(v) < FLOAT32_OVERFLOW), None)  # NaN too
    if bad is not None:
        i, j, raw = bad
        what = f"is {raw}" if not math.isfinite(raw) else f"is {raw:g}, beyond the float32 range"
        fix = "give finite numbers within +-3.4e38 (no NaN or infinity)"
        raise _error(f"{labels[i]}, column {j + col_base} {what}", fix, field, raw)
    return torch.tensor(values, dtype=torch.float32)


def points_from_rows(
    rows: Sequence[Sequence[float]],
    *,
    field: str = "points",
    max_dim: int = MAX_DIM,
    min_points: int = 1,
    max_points: int | None = None,
) -> Tensor:
    """Validate JSON-like rows (one point each) into an ``(N, D)`` float32 tensor.

    Rows and columns in messages are 0-based. Rejects: non-list input, empty input, empty or ragged
    rows, non-numbers (booleans and strings included), NaN/inf, ``D > max_dim`` and counts outside
    ``[min_points, max_points]``.
    """
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
        raise _error("points must be a list of rows", "send a list of lists of numbers", field)
    if len(rows) == 0:
        raise _error("no points given", "send at least one row of numbers", field)
    first = rows[0]
    if isinstance(first, str | bytes) or not isinstance(first, Sequence):
        raise _error("row 0 is not a list of numbers", "send each point as a list", field, repr(first)[:80])
    labels = [f"row {i}" for i in range(len(rows))]
    limits = {"max_dim": max_dim, "min_points": min_points, "max_points": max_points}
    return _tabulate(rows, labels, ("row 0", len(first)), _python_number, col_base=0, field=field, **limits)


def points_from_csv(
    data: bytes | str,
    *,
    max_dim: int = MAX_DIM,
    min_points: int = MIN_CSV_POINTS,
    max_points: int | None = None,
) -> Tensor:
    """Parse comma-separated points, one per line, into an ``(N, D)`` float32 tensor.

    An optional header is a first line none of whose cells is a number. Blank lines are ignored.
    Lines and columns in messages are 1-based, as in an editor.
    """
    header: tuple[str, int] | None = None
    labels: list[str] = []
    rows: list[list[str]] = []
    for line, cells in csv_lines(decode_csv(data), "file", strict=True):
        if all(not c.strip() for c in cells):
            continue
        if not rows and header is None and all(_text_number(c) is None for c in cells):
            header = (f"line {line} (the header)", len(cells))
            continue
        rows.append(cells)
        labels.append(f"line {line}")
    if not rows:
        raise _error(
            "the CSV has no data rows", "give one point per line, values separated by commas", "file"
        )
    width = header or (labels[0], len(rows[0]))
    limits = {"max_dim": max_dim, "min_points": min_points, "max_points": max_points}
    return _tabulate(rows, labels, width, _text_number, col_base=1, field="file", **limits)


def point_data_from_tensor(name: str, points: Tensor, seed: int = 0, test_fraction: float = 0.2) -> PointData:
    """Shuffle ``points`` ``(N, D)`` with ``seed`` and split off ``test_fraction`` (at least 1) as test."""
    if points.dim() != 2 or points.shape[0] < 2 or points.shape[1] < 1:
        shape = tuple(points.shape)
        raise _error(f"need an (N, D) tensor with N >= 2, got {shape}", "give 2+ points", "points", shape)
    if not 0 < test_fraction < 1:
        fix = "use e.g. 0.2"
        raise _error(
            f"test_fraction must be in (0, 1), got {test_fraction}", fix, "test_fraction", test_fraction
        )
    values = points.detach().to("cpu", torch.float32)
    if not torch.isfinite(values).all():
        raise _error("points contain NaN or infinity", "drop or fix non-finite rows", "points")
    n = values.shape[0]
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = values[order]
    return PointData(name, train=shuffled[n_test:].clone(), test=shuffled[:n_test].clone())

"""Real tabular datasets shipped inside scikit-learn (no download at run time).

``TABULAR`` lists them; :func:`load_tabular` returns a fixed train/test split, standardised with
the training statistics, as float32 tensors:

* ``digits``: 1797 8x8 handwritten digits (64-D, pixel values 0..16). Integer pixels are
  dequantised with uniform noise ``U(0, 1)`` before standardising (a continuous density of integer
  data is otherwise unbounded; Theis et al., arXiv:1511.01844).
* ``wine``: 178 wines, 13 chemical measurements.
* ``diabetes``: 442 patients, 10 baseline variables plus the disease-progression target (11-D).
  Its binary ``sex`` column and integer ``age`` are dequantised the same way, with noise as wide
  as the column's grid step.

Training re-draws the noise: ``PointData.batch`` of a table returns each drawn row's cell corner
plus fresh ``U(0, width)`` noise (``train_cells``, ``cell_width``), so a model cannot learn one
fixed draw of the noise (on digits a 2x256 flow-matching run: 0.819 nats/dim with one draw, 0.713
with fresh draws, same 60 s). Validation and test rows keep their one fixed draw.

Everything is fixed: the split (``TEST_FRACTION`` of the rows, permutation seed ``SPLIT_SEED``)
and the dequantisation noise (seed ``NOISE_SEED``), so a dataset name means the same numbers in
every run, worker and benchmark. The run's seed only drives training. A column counts as
discrete when it has at most ``MAX_DISCRETE_LEVELS`` distinct values on an even grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from service.ml.errors import DataError, UnknownNameError

__all__ = [
    "MAX_DISCRETE_LEVELS",
    "NOISE_SEED",
    "SPLIT_SEED",
    "TABULAR",
    "TEST_FRACTION",
    "TabularSplit",
    "TabularSpec",
    "load_tabular",
]

TEST_FRACTION = 0.2
SPLIT_SEED = 20_240_601
NOISE_SEED = 17
MAX_DISCRETE_LEVELS = 64


@dataclass(frozen=True)
class TabularSpec:
    """One scikit-learn bundled dataset: its loader name and dimension."""

    name: str
    dim: int
    rows: int
    description: str
    loader: str  # a function of ``sklearn.datasets``
    with_target: bool = False
    quantum: float | None = None  # every column's grid step (None: detected per column)


@dataclass(frozen=True, eq=False)
class TabularSplit:
    """Standardised ``train``/``test`` ``(N, D)`` float32 and the map back to raw units."""

    train: Tensor
    test: Tensor
    mean: Tensor  # (D,) raw-unit (dequantised) training mean
    std: Tensor  # (D,) raw-unit training standard deviation
    train_cells: Tensor  # (N, D) standardised lower corner of each training row's dequantisation cell
    cell_width: Tensor  # (D,) standardised width of a column's cell (0: a continuous column)


TABULAR: dict[str, TabularSpec] = {
    spec.name: spec
    for spec in [
        TabularSpec(
            "digits",
            64,
            1797,
            "scikit-learn digits: 1797 8x8 images (64-D), dequantised with U(0,1) noise, standardised.",
            "load_digits",
            quantum=1.0,  # integer pixels; some are 0 in every image, so detection would miss them
        ),
        TabularSpec(
            "wine",
            13,
            178,
            "scikit-learn wine: 178 wines, 13 chemical measurements, standardised.",
            "load_wine",
        ),
        TabularSpec(
            "diabetes",
            11,
            442,
            "scikit-learn diabetes: 442 patients, 10 variables + progression target (11-D), "
            "sex and age dequantised, standardised.",
            "load_diabetes",
            with_target=True,
        ),
    ]
}
"""Built-in real datasets by name (merged into ``service.ml.data.DATASETS``)."""


def _grid_step(column: np.ndarray) -> float | None:
    """The spacing of a discrete column (<= MAX_DISCRETE_LEVELS values on an even grid), else None."""
    levels = np.unique(column)
    if len(levels) < 2 or len(levels) > MAX_DISCRETE_LEVELS:
        return None
    gaps = np.diff(levels)
    step = float(gaps.min())
    multiples = gaps / step
    if not np.allclose(multiples, np.round(multiples), atol=1e-6):
        return None
    return step


def _raw(spec: TabularSpec) -> np.ndarray:
    try:
        from sklearn import datasets
    except ImportError:  # pragma: no cover - scikit-learn is a runtime dependency
        raise DataError(
            f"dataset {spec.name!r} needs scikit-learn",
            value=spec.name,
            fix="pip install scikit-learn (a dependency of odeserve)",
            field="dataset.name",
        ) from None
    bunch = getattr(datasets, spec.loader)()
    data = np.asarray(bunch.data, dtype=np.float64)
    if spec.with_target:
        data = np.concatenate([data, np.asarray(bunch.target, dtype=np.float64)[:, None]], axis=1)
    return data


@functools.lru_cache(maxsize=len(TABULAR))
def _split(name: str) -> TabularSplit:
    spec = TABULAR[name]
    data = _raw(spec)
    rng = np.random.default_rng(NOISE_SEED)
    noise = rng.uniform(0.0, 1.0, size=data.shape)
    cells, width = data.copy(), np.zeros(data.shape[1])
    for j in range(data.shape[1]):
        step = spec.quantum or _grid_step(data[:, j])
        if step is not None:
            width[j] = step
            data[:, j] = data[:, j] + step * noise[:, j]
    order = np.random.default_rng(SPLIT_SEED).permutation(data.shape[0])
    n_test = round(TEST_FRACTION * data.shape[0])
    test, train = data[order[:n_test]], data[order[n_test:]]
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12, std, 1.0)

    def standardise(values: np.ndarray) -> Tensor:
        return torch.from_numpy((values - mean) / std).to(torch.float32)

    return TabularSplit(
        standardise(train),
        standardise(test),
        torch.from_numpy(mean).to(torch.float32),
        torch.from_numpy(std).to(torch.float32),
        standardise(cells[order[n_test:]]),
        torch.from_numpy(width / std).to(torch.float32),
    )


def load_tabular(name: str, n_train: int | None = None, n_test: int | None = None) -> TabularSplit:
    """The fixed split of ``name``; ``n_train``/``n_test`` keep at most that many leading rows.

    Returns fresh tensors (callers may move or modify them).
    """
    if name not in TABULAR:
        raise UnknownNameError("dataset", name, list(TABULAR))
    split = _split(name)
    rows = slice(None, n_train)
    test = split.test[: n_test if n_test is not None else None].clone()
    return TabularSplit(
        split.train[rows].clone(),
        test,
        split.mean.clone(),
        split.std.clone(),
        split.train_cells[rows].clone(),
        split.cell_width.clone(),
    )

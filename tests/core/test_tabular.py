"""Real tables bundled with scikit-learn: shapes, fixed split, standardisation, dequantisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import datasets as sk

from service.ml.data import DATASETS, load_dataset
from service.ml.tabular import MAX_DISCRETE_LEVELS, TABULAR, TEST_FRACTION, load_tabular

SHAPES = {"digits": (1797, 64), "wine": (178, 13), "diabetes": (442, 11)}


def _raw(name: str) -> np.ndarray:
    bunch = getattr(sk, TABULAR[name].loader)()
    if TABULAR[name].with_target:
        return np.concatenate([bunch.data, bunch.target[:, None]], axis=1)
    return bunch.data


@pytest.mark.parametrize("name", list(SHAPES))
def test_split_shapes_and_train_standardisation(name: str) -> None:
    rows, dim = SHAPES[name]
    split = load_tabular(name)
    n_test = round(TEST_FRACTION * rows)
    assert split.train.shape == (rows - n_test, dim) and split.test.shape == (n_test, dim)
    assert split.train.dtype == split.test.dtype == torch.float32
    assert DATASETS[name].dim == dim
    # Standardised with the training statistics: exact on train, approximately on test.
    assert split.train.double().mean(0).abs().max() < 1e-5
    assert torch.allclose(split.train.double().std(0, unbiased=False), torch.ones(dim, dtype=torch.float64))
    assert split.test.mean(0).abs().max() < 1.0
    assert torch.isfinite(split.test).all()


@pytest.mark.parametrize("name", list(SHAPES))
def test_split_is_fixed_and_a_partition_of_the_raw_rows(name: str) -> None:
    first, again = load_tabular(name), load_dataset(name, seed=5)
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    assert torch.equal(load_dataset(name, seed=0).train, load_dataset(name, seed=9).train)
    # Back in raw units every row is a raw row plus dequantisation noise below one grid step.
    back = torch.cat([first.train, first.test]).double() * first.std.double() + first.mean.double()
    raw = torch.as_tensor(_raw(name), dtype=torch.float64)
    # Match on the columns left continuous (all of them for digits, where noise < 1 of 0..16).
    keep = [j for j in range(raw.shape[1]) if len(torch.unique(raw[:, j])) > MAX_DISCRETE_LEVELS]
    keep = keep if TABULAR[name].quantum is None else list(range(raw.shape[1]))
    nearest = torch.cdist(back[:, keep], raw[:, keep]).argmin(1)
    assert torch.allclose(back[:, keep], raw[nearest][:, keep], rtol=1e-5, atol=1e-5) or name == "digits"
    assert len(set(nearest.tolist())) == raw.shape[0]  # every raw row used exactly once
    offset = back - raw[nearest]
    assert (offset >= -1e-4).all()  # noise is U(0, step): never below the raw value
    assert torch.isfinite(offset).all()


def test_digits_are_dequantised_with_unit_uniform_noise() -> None:
    split = load_tabular("digits")
    back = split.train.double() * split.std.double() + split.mean.double()
    frac = back - back.floor()
    assert back.min() >= -1e-4 and back.max() < 17 + 1e-4
    # U(0, 1) noise on integer pixels: the fractional parts are uniform (mean 1/2, variance 1/12).
    assert frac.mean().item() == pytest.approx(0.5, abs=0.01)
    assert frac.var().item() == pytest.approx(1 / 12, abs=0.005)
    assert len(torch.unique(back)) > 0.99 * back.numel()  # no two values tie: a continuous density


def test_diabetes_binary_sex_column_is_spread_over_its_gap() -> None:
    split = load_tabular("diabetes")
    raw = _raw("diabetes")[:, 1]
    levels = np.unique(raw)
    assert len(levels) == 2
    back = (split.train[:, 1].double() * split.std[1] + split.mean[1]).numpy()
    assert back.min() >= levels[0] - 1e-6 and back.max() <= levels[1] + (levels[1] - levels[0]) + 1e-6
    assert len(np.unique(back.round(9))) == len(back)


def test_row_limits_keep_leading_rows() -> None:
    full, part = load_tabular("wine"), load_dataset("wine", n_train=50, n_test=10)
    assert torch.equal(part.train, full.train[:50]) and torch.equal(part.test, full.test[:10])


@pytest.mark.parametrize("name", list(SHAPES))
def test_training_batches_redraw_the_dequantisation_noise_inside_each_cell(name: str) -> None:
    data = load_dataset(name).with_validation_points(50, seed=3)
    assert data.cells is not None and data.cell_width is not None
    assert data.cells.shape == data.train.shape
    # The fixed draw lies in its row's cell: corner <= value < corner + width (continuous: equal).
    offset = data.train - data.cells
    assert (offset >= -1e-5).all() and (offset <= data.cell_width + 1e-5).all()
    continuous = data.cell_width == 0
    assert torch.equal(data.train[:, continuous], data.cells[:, continuous])
    first = data.batch(4096, torch.Generator().manual_seed(0))
    again = data.batch(4096, torch.Generator().manual_seed(0))
    other = data.batch(4096, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Each drawn row is a training cell plus U(0, width) noise: the position inside the cell grid
    # (cells lie on an even grid of their width) is uniform, and not the fixed draw.
    discrete = ~continuous
    if discrete.any():
        width = data.cell_width[discrete].double()
        low = data.cells[:, discrete].double().min(0).values
        frac = ((first[:, discrete].double() - low) / width) % 1.0
        assert frac.mean().item() == pytest.approx(0.5, abs=0.02)
        assert frac.var().item() == pytest.approx(1 / 12, abs=0.01)
        assert not torch.isin(first[:, discrete], data.train[:, discrete]).all()  # not the fixed draw


def test_digits_batches_are_cell_corners_plus_fresh_noise() -> None:
    data = load_dataset("digits")
    split = load_tabular("digits")
    generator = torch.Generator().manual_seed(7)
    idx = torch.randint(0, data.train.shape[0], (512,), generator=torch.Generator().manual_seed(7))
    batch = data.batch(512, generator)
    back = batch.double() * split.std.double() + split.mean.double()
    corners = data.cells[idx].double() * split.std.double() + split.mean.double()
    assert torch.allclose(corners, corners.round(), atol=1e-3)  # integer pixels
    noise = back - corners  # the drawn rows' own cells (same index stream as the batch)
    assert noise.min() >= -1e-3 and noise.max() <= 1 + 1e-3
    assert noise.mean().item() == pytest.approx(0.5, abs=0.01)

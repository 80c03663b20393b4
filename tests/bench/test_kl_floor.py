"""bench_kl_floor's exact part: the blurred checkerboard's density and its KL to the checkerboard."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.bench_kl_floor import blur_kl, blurred_log_density, edge_kl_1d, floor_png, width_for_kl
from service.ml.toy2d import checkerboard, checkerboard_log_prob


@pytest.fixture(scope="module")
def points() -> torch.Tensor:
    return checkerboard(1_000_000, torch.Generator().manual_seed(1)).double()


@pytest.mark.parametrize("width", [0.05, 0.3, 1.0])
def test_blurred_density_integrates_to_one(width: float) -> None:
    h = 0.01
    axis = torch.arange(-8.0 + h / 2, 8.0, h, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    mass = blurred_log_density(grid, width).exp().sum() * h * h
    assert mass.item() == pytest.approx(1.0, abs=2e-4)


def test_a_thin_blur_keeps_the_checkerboard_away_from_its_edges() -> None:
    centres = torch.cartesian_prod(*[torch.arange(-3.0, 4.0, 2.0, dtype=torch.float64)] * 2)
    truth = checkerboard_log_prob(centres).to(torch.float64)
    blurred = blurred_log_density(centres, 0.01)
    inside = torch.isfinite(truth)
    assert inside.sum() == 8
    torch.testing.assert_close(blurred[inside], truth[inside], rtol=0, atol=1e-12)
    assert (blurred[~inside] < -1000).all()


@pytest.mark.parametrize("width", [0.01, 0.03])
def test_small_blur_kl_equals_two_edges_of_one_cell(width: float, points: torch.Tensor) -> None:
    # A single cell is a product of two intervals, so its KL is twice the 1-D one (trapezoid rule);
    # the checkerboard's cells touch only at corners, which matters at order width^2.
    kl, stderr = blur_kl(width, points)
    assert stderr < 0.02 * kl
    assert kl == pytest.approx(2 * edge_kl_1d(width), abs=4 * stderr + 0.01 * kl)


def test_blur_kl_grows_with_the_width_and_vanishes_without_it(points: torch.Tensor) -> None:
    kls = [blur_kl(s, points[:100_000])[0] for s in (1e-4, 0.01, 0.1, 0.5)]
    assert kls == sorted(kls)
    assert kls[0] < 2e-4
    # About one nat per unit of blur for thin edges: KL 0.01 needs edges about 1/190 of a cell wide.
    assert kls[1] == pytest.approx(0.0095, abs=0.0005)


def test_width_for_kl_inverts_blur_kl(points: torch.Tensor) -> None:
    sample = points[:100_000]
    for kl in (0.01, 0.2):
        width = width_for_kl(kl, sample)
        assert blur_kl(width, sample)[0] == pytest.approx(kl, rel=1e-6)


def test_the_picture_is_a_png_with_a_curve_per_run() -> None:
    curve = [{"iteration": i, "train_s": 10.0 * i, "test_nll": math.log(32) + 0.3 / i} for i in range(1, 6)]
    payload = {
        "reference_s": 20.0,
        "blur": [{"width": 0.01, "kl": 0.0095}, {"width": 0.1, "kl": 0.094}],
        "runs": {"a": {"curve": curve}, "b": {"curve": curve[1:]}},
    }
    png = floor_png(payload)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[1] > image.shape[0]
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert red.sum() > 100  # the dashed 0.01 target line is drawn

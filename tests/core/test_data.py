"""Built-in datasets against exact answers, and validation of user points (rows and CSV)."""

from __future__ import annotations

import math

import pytest
import torch

from service.ml.data import (
    DATASETS,
    FLOAT32_OVERFLOW,
    MAX_DIM,
    MIN_CSV_POINTS,
    PointData,
    load_dataset,
    point_data_from_tensor,
    points_from_csv,
    points_from_rows,
)
from service.ml.errors import DataError, UnknownNameError
from service.ml.mixtures1d import MIXTURES, BetaComponent, BetaMixture
from service.ml.toy2d import checkerboard_log_prob, gaussians8_log_prob

torch.set_num_threads(2)

TOYS = ["swissroll", "8gaussians", "pinwheel", "circles", "moons", "2spirals", "checkerboard", "rings"]
ONE_D = ["beta_1", "beta_2", "beta_3", "beta_4", "normal_1d"]
TABLES = {"digits": 64, "wine": 13, "diabetes": 11}  # tests/core/test_tabular.py
SAMPLED = [name for name in DATASETS if name not in TABLES]
ENTROPY_8GAUSSIANS = 2.833


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_lists_the_eight_toys_the_1d_targets_and_the_tables() -> None:
    assert set(DATASETS) == set(TOYS) | set(ONE_D) | set(TABLES)
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.kind == "points"
        assert spec.dim == TABLES.get(name, 2 if name in TOYS else 1)
        assert spec.fixed_split == (name in TABLES)
    known = {n for n, s in DATASETS.items() if s.true_log_prob is not None}
    assert known == {"8gaussians", "checkerboard", *ONE_D}


@pytest.mark.parametrize("name", SAMPLED)
def test_every_dataset_is_deterministic_finite_and_on_its_support(name: str) -> None:
    data = load_dataset(name, seed=3, n_train=2001, n_test=503)
    assert data.kind == "points" and data.dim == DATASETS[name].dim
    assert data.train.shape == (2001, data.dim) and data.test.shape == (503, data.dim)
    assert data.train.dtype == data.test.dtype == torch.float32
    assert torch.isfinite(data.train).all() and torch.isfinite(data.test).all()
    assert data.train.abs().max() < 10
    again = load_dataset(name, seed=3, n_train=2001, n_test=503)
    assert torch.equal(again.train, data.train) and torch.equal(again.test, data.test)
    other = load_dataset(name, seed=4, n_train=2001, n_test=503)
    assert not torch.equal(other.train, data.train)
    # Train and test come from different streams: neither starts like the other.
    assert not torch.equal(data.train[:503], data.test)
    if data.true_log_prob is not None:
        assert torch.isfinite(data.true_log_prob(data.train)).all()


@pytest.mark.parametrize("name", list(DATASETS))
def test_sampler_uses_only_the_generator(name: str) -> None:
    sampler = DATASETS[name].sampler
    torch.manual_seed(0)
    first = sampler(257, _gen(11))
    torch.manual_seed(1)  # the global RNG must not matter
    assert torch.equal(sampler(257, _gen(11)), first)
    assert sampler(257, _gen(12)).shape == (257, DATASETS[name].dim)


# Exact means and E|x|^2 of the standard constructions (derivations in the comments).
TOY_MOMENTS = {
    # t ~ U[1.5pi, 4.5pi]: E[t cos t] = 2, E[t sin t] = 2 / (3 pi), E[t^2] = 9.75 pi^2; noise var 1 each.
    "swissroll": ((0.4, 2 / (15 * math.pi)), (9.75 * math.pi**2 + 2) / 25),
    # 0.5 * (4 / 1.414)^2 per axis from the centres, plus (0.5 / 1.414)^2 noise.
    "8gaussians": ((0.0, 0.0), (16 + 2 * 0.25) / 1.414**2),
    # Rotation keeps the norm: 4 * (E[f0^2] + E[f1^2]) = 4 * (1 + 0.3^2 + 0.1^2).
    "pinwheel": ((0.0, 0.0), 4 * (1 + 0.09 + 0.01)),
    "circles": ((0.0, 0.0), (9 + 2.25) / 2 + 2 * 0.24**2),
    # Outer arc mean (0, 2/pi), inner (1, 0.5 - 2/pi); then 2 x + (-1, -0.2).
    "moons": ((0.0, 0.3), None),
    "2spirals": ((0.0, 0.0), None),
    # Both marginals are uniform on [-4, 4].
    "checkerboard": ((0.0, 0.0), 2 * 16 / 3),
    "rings": ((0.0, 0.0), (9 + 2.25**2 + 1.5**2 + 0.75**2) / 4 + 2 * 0.08**2),
}


@pytest.mark.parametrize("name", TOYS)
def test_toy_moments_match_the_standard_construction(name: str) -> None:
    x = DATASETS[name].sampler(40_000, _gen(5)).double()
    mean, second = TOY_MOMENTS[name]
    se = x.std(0) / math.sqrt(len(x))
    assert ((x.mean(0) - torch.tensor(mean, dtype=torch.float64)).abs() < 5 * se).all()
    if second is not None:
        sq = (x**2).sum(1)
        assert abs(sq.mean().item() - second) < 5 * sq.std().item() / math.sqrt(len(x))


def test_checkerboard_fills_its_eight_squares_evenly() -> None:
    x = DATASETS["checkerboard"].sampler(40_000, _gen(6))
    cell = torch.floor(x / 2).long() + 2  # in 0..3
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16).double()
    on = (cell.sum(1) % 2 == 0).all()
    assert on
    occupied = counts[counts > 0]
    assert len(occupied) == 8
    assert ((occupied / len(x) - 1 / 8).abs() < 5 * math.sqrt(1 / 8 * 7 / 8 / len(x))).all()


def test_gaussians8_log_prob_matches_a_torch_mixture() -> None:
    r = 1 / math.sqrt(2)
    unit = torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1], [r, r], [r, -r], [-r, r], [-r, -r]])
    comp = torch.distributions.Independent(
        torch.distributions.Normal(4 * unit.double() / 1.414, torch.full((8, 2), 0.5 / 1.414)), 1
    )
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(torch.ones(8)), comp)
    x = 4 * torch.rand(500, 2, generator=_gen(0), dtype=torch.float64) - 2
    torch.testing.assert_close(gaussians8_log_prob(x), mix.log_prob(x))


def test_2d_true_densities_integrate_to_one() -> None:
    axis = torch.linspace(-6, 6, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    p = gaussians8_log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().view(601, 601)
    assert torch.trapezoid(torch.trapezoid(p, axis, dim=1), axis).item() == pytest.approx(1, abs=1e-2)
    # Midpoints of 0.01-wide cells: none lies on a square's edge, so the midpoint rule is exact.
    mid = (torch.arange(-500, 500, dtype=torch.float64) + 0.5) / 100
    mx, my = torch.meshgrid(mid, mid, indexing="ij")
    q = checkerboard_log_prob(torch.stack([mx.flatten(), my.flatten()], 1)).exp()
    assert (q.sum() * 0.01**2).item() == pytest.approx(1, abs=1e-2)
    outside = torch.tensor([[4.5, 0.5], [2.5, 0.5], [-1.0, 1.0], [4.0, -4.0]], dtype=torch.float64)
    assert (checkerboard_log_prob(outside) == -math.inf).all()
    assert checkerboard_log_prob(torch.tensor([[1.0, 1.0]])).item() == pytest.approx(-math.log(32))


def test_gaussians8_entropy_matches_a_monte_carlo_estimate() -> None:
    spec = DATASETS["8gaussians"]
    assert spec.entropy == pytest.approx(ENTROPY_8GAUSSIANS, abs=2e-3)
    x = spec.sampler(200_000, _gen(7))
    estimate = -spec.true_log_prob(x.double()).mean().item()
    assert estimate == pytest.approx(ENTROPY_8GAUSSIANS, abs=0.02)
    assert estimate == pytest.approx(spec.entropy, abs=0.01)


def test_every_dataset_with_a_true_density_knows_its_entropy() -> None:
    for name, spec in DATASETS.items():
        assert (spec.entropy is not None) == (spec.true_log_prob is not None), name


def test_checkerboard_entropy_is_log_32() -> None:
    assert DATASETS["checkerboard"].entropy == pytest.approx(math.log(32), rel=1e-15)


@pytest.mark.parametrize("name", ["beta_1", "beta_2", "beta_3", "beta_4"])
def test_beta_mixture_entropy_matches_monte_carlo(name: str) -> None:
    spec = DATASETS[name]
    assert MIXTURES[name].entropy(cells=200_000) == pytest.approx(spec.entropy, abs=1e-6)
    x = spec.sampler(200_000, _gen(9)).double()
    assert -spec.true_log_prob(x).mean().item() == pytest.approx(spec.entropy, abs=0.01)
    if name == "beta_1":
        assert spec.entropy == pytest.approx(0.0, abs=1e-12)  # uniform on an interval of length 1


def test_normal_1d_entropy_is_exact_and_matches_monte_carlo() -> None:
    spec = DATASETS["normal_1d"]
    assert spec.entropy == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 0.49), rel=1e-12)
    x = spec.sampler(200_000, _gen(8))
    assert -spec.true_log_prob(x).double().mean().item() == pytest.approx(spec.entropy, abs=0.01)


def _mixture_mass(mix: BetaMixture, points_per_piece: int = 20_001) -> float:
    """Integrate piecewise between breakpoints with x = l + (r - l) sin^2(theta).

    The substitution's Jacobian cancels the 1/sqrt singularities of Beta(0.5, 0.5) at piece ends,
    leaving a smooth integrand for the trapezoid rule.
    """
    theta = torch.linspace(0, math.pi / 2, points_per_piece, dtype=torch.float64)
    ends = mix.breakpoints
    total = 0.0
    for lo, hi in zip(ends[:-1], ends[1:], strict=True):
        x = lo + (hi - lo) * torch.sin(theta) ** 2
        jac = (hi - lo) * torch.sin(2 * theta)
        total += torch.trapezoid(mix.log_prob(x[:, None]).exp() * jac, theta).item()
    return total


@pytest.mark.parametrize("name", ["beta_1", "beta_2", "beta_3"])
def test_beta_mixture_density_integrates_to_one_on_a_grid(name: str) -> None:
    grid = torch.linspace(-3, 3, 600_001, dtype=torch.float64)
    density = MIXTURES[name].log_prob(grid[:, None]).exp()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("name", ["beta_1", "beta_2", "beta_3", "beta_4"])
def test_beta_mixture_density_integrates_to_one_through_its_singularities(name: str) -> None:
    assert _mixture_mass(MIXTURES[name]) == pytest.approx(1, abs=1e-4)


def test_normal_1d_density_integrates_to_one() -> None:
    grid = torch.linspace(6 - 7, 6 + 7, 20_001, dtype=torch.float64)
    density = DATASETS["normal_1d"].true_log_prob(grid[:, None]).exp()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.5), (1, 1), (3, 3), (5, 2), (5, 1)])
def test_beta_component_log_prob_matches_torch_beta(a: float, b: float) -> None:
    y = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    ours = BetaComponent(a, b, shift=-1.0).log_prob(y - 1.0)
    ref = torch.distributions.Beta(torch.tensor(float(a)), torch.tensor(float(b))).log_prob(y)
    torch.testing.assert_close(ours, ref.double())
    outside = torch.tensor([-1.5, -1.0 - 1e-9, 1e-9, 2.0], dtype=torch.float64)
    assert (BetaComponent(a, b, shift=-1.0).log_prob(outside) == -math.inf).all()


def test_arcsine_endpoints_stay_finite_and_large() -> None:
    ends = torch.tensor([[-2.0], [-1.0], [-0.1], [0.9], [1.0], [2.0]], dtype=torch.float64)
    value = MIXTURES["beta_4"].log_prob(ends)
    assert torch.isfinite(value).all() and (value > 5).all()
    assert MIXTURES["beta_4"].log_prob(torch.tensor([[2.5], [-2.01]])).eq(-math.inf).all()


@pytest.mark.parametrize("name", ONE_D)
def test_1d_sample_moments_match_the_exact_mixture(name: str) -> None:
    if name == "normal_1d":
        mean, var = 6.0, 0.49
    else:
        mean, var = MIXTURES[name].mean, MIXTURES[name].variance
    x = DATASETS[name].sampler(100_000, _gen(9))[:, 0].double()
    n = len(x)
    centred = x - x.mean()
    se_var = math.sqrt(((centred**4).mean() - centred.var() ** 2).item() / n)
    assert abs(x.mean().item() - mean) < 4 * math.sqrt(var / n)
    assert abs(centred.var().item() - var) < 4 * se_var


def test_mixture_moments_are_those_of_the_beta_formulas() -> None:
    # beta_2: means -1.5, 0.5, 0.5 + 5/7; variances 1/12, 9/252 = 1/28, 10/392.
    mix = MIXTURES["beta_2"]
    means = [-1.5, 0.5, 0.5 + 5 / 7]
    variances = [1 / 12, 1 / 28, 10 / 392]
    assert mix.mean == pytest.approx(sum(means) / 3)
    second = sum(v + m * m for v, m in zip(variances, means, strict=True)) / 3
    assert mix.variance == pytest.approx(second - mix.mean**2)


def test_load_dataset_rejects_unknown_names_and_bad_sizes() -> None:
    with pytest.raises(UnknownNameError) as err:
        load_dataset("9gaussians")
    assert "8gaussians" in str(err.value) and "beta_4" in str(err.value)
    with pytest.raises(DataError):
        load_dataset("moons", n_train=0)
    with pytest.raises(DataError):
        load_dataset("moons", n_test=-1)


def test_batch_draws_train_rows_with_the_generator_only() -> None:
    data = load_dataset("rings", n_train=300, n_test=10)
    batch = data.batch(64, _gen(1))
    assert batch.shape == (64, 2)
    assert torch.equal(batch, data.batch(64, _gen(1)))
    assert not torch.equal(batch, data.batch(64, _gen(2)))
    # Every row is a train row.
    assert (torch.cdist(batch, data.train).min(1).values == 0).all()
    with pytest.raises(DataError):
        data.batch(0, _gen(1))


def test_point_data_from_tensor_shuffles_and_splits_deterministically() -> None:
    points = torch.arange(60, dtype=torch.float32).view(30, 2)
    data = point_data_from_tensor("user", points, seed=1, test_fraction=0.2)
    assert isinstance(data, PointData) and data.true_log_prob is None and data.entropy is None
    assert data.train.shape == (24, 2) and data.test.shape == (6, 2)
    both = torch.cat([data.train, data.test])
    assert torch.equal(both[both[:, 0].argsort()], points)
    assert not torch.equal(both, points)  # shuffled
    same = point_data_from_tensor("user", points, seed=1)
    assert torch.equal(same.train, data.train)
    tiny = point_data_from_tensor("tiny", points[:2], test_fraction=0.01)
    assert tiny.train.shape == (1, 2) and tiny.test.shape == (1, 2)
    for bad in (points[:1], points[:, :0], points.flatten(), points.clone().fill_(math.nan)):
        with pytest.raises(DataError):
            point_data_from_tensor("bad", bad)


CSV_CASES = {
    "ragged": (b"1,2\n3,4\n5\n", "line 3"),
    "nan": (b"1,2\n3,nan\n", "line 2, column 2"),
    "inf": (b"x,y\n1,2\n-inf,4\n", "line 3, column 1"),
    "float32 overflow": (b"1,2\n3,1e300\n", "line 2, column 2"),
    "non-numeric": (b"1,2\n3,four\n", "line 2, column 2"),
    "empty cell": (b"1,2\n3,\n", "line 2, column 2"),
    "too few points": (b"1,2\n3,4\n", "at least 10"),
    "too many dims": ((",".join(["1"] * (MAX_DIM + 1)) + "\n").encode(), "line 1"),
    "invalid utf-8": (b"1,2\n3,4\n\xff\xfe,1\n", "line 3"),
    "empty": (b"", "no data rows"),
    "header only": (b"x,y\n\n", "no data rows"),
    "header width": (b"x,y,z\n1,2\n", "line 2"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_csv_errors_name_the_line_and_the_fix(case: str) -> None:
    data, expected = CSV_CASES[case]
    min_points = MIN_CSV_POINTS if case == "too few points" else 1
    with pytest.raises(DataError) as err:
        points_from_csv(data, min_points=min_points)
    assert expected in err.value.message
    assert err.value.fix and err.value.field == "file"


ROW_CASES = {
    "ragged": ([[1, 2], [3, 4], [5]], "row 2"),
    "nan": ([[1, 2], [3, math.nan]], "row 1, column 1"),
    "inf": ([[math.inf, 2]], "row 0, column 0"),
    "huge int": ([[10**400, 2]], "row 0, column 0"),
    "beyond float32": ([[1, 2], [3, -4e38]], "row 1, column 1 is -4e+38, beyond the float32 range"),
    "string": ([[1, 2], ["3", 4]], "row 1, column 0"),
    "bool": ([[1, True]], "row 0, column 1"),
    "null": ([[1, 2], [None, 4]], "row 1, column 0"),
    "row not a list": ([[1, 2], 3], "row 1"),
    "empty row": ([[]], "row 0"),
    "too many dims": ([[0.0] * (MAX_DIM + 1)], "row 0"),
    "empty": ([], "no points"),
    "not a list": ("1,2", "list of rows"),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_row_errors_name_the_row_and_the_fix(case: str) -> None:
    rows, expected = ROW_CASES[case]
    with pytest.raises(DataError) as err:
        points_from_rows(rows, field="points")  # type: ignore[arg-type]
    assert expected in err.value.message
    assert err.value.fix and err.value.field == "points"


def test_row_count_limits() -> None:
    rows = [[float(i), 0.0] for i in range(5)]
    with pytest.raises(DataError, match="at least 6"):
        points_from_rows(rows, min_points=6)
    with pytest.raises(DataError, match="at most 4"):
        points_from_rows(rows, max_points=4)
    with pytest.raises(DataError, match="at most 1 are allowed"):
        points_from_rows(rows, max_dim=1)
    out = points_from_rows(rows, max_points=5)
    assert out.dtype == torch.float32 and out.shape == (5, 2)


def test_the_float32_limit_is_where_float64_values_round_to_infinity() -> None:
    # Accepted exactly when torch's own float64 -> float32 conversion stays finite.
    for edge in (FLOAT32_OVERFLOW, -FLOAT32_OVERFLOW):
        inside = math.nextafter(edge, 0.0)
        assert torch.isinf(torch.tensor([edge], dtype=torch.float64).float()).all()
        assert torch.isfinite(torch.tensor([inside], dtype=torch.float64).float()).all()
        assert torch.equal(points_from_rows([[inside, 1.0]]), torch.tensor([[inside, 1.0]]).float())
        with pytest.raises(DataError, match="beyond the float32 range"):
            points_from_rows([[1.0, edge]])


def test_csv_with_and_without_header_parse_to_the_same_points() -> None:
    rows = [[0.5 * i, -1e-3 * i, 2.0**i] for i in range(12)]
    body = "\n".join(",".join(repr(v) for v in row) for row in rows)
    plain = points_from_csv(body.encode())
    headed = points_from_csv(("x, y ,z\n\n" + body.replace("\n", "\r\n") + "\n\n").encode("utf-8-sig"))
    torch.testing.assert_close(plain, torch.tensor(rows, dtype=torch.float32), rtol=0, atol=0)
    assert torch.equal(plain, headed)
    assert torch.equal(plain, points_from_csv(body))  # str input
    assert torch.equal(points_from_rows(rows), plain)


def test_pinwheel_fourth_moment_separates_radial_and_tangential_noise() -> None:
    # |x|^2 = 4 (f0^2 + f1^2), f0 ~ N(1, 0.3^2), f1 ~ N(0, 0.1^2) independent (rotation keeps norms):
    # E|x|^4 = 16 (E f0^4 + 2 E f0^2 E f1^2 + E f1^4) with E f0^4 = 1 + 6 * 0.09 + 3 * 0.09^2.
    expected = 16 * ((1 + 6 * 0.09 + 3 * 0.09**2) + 2 * 1.09 * 0.01 + 3 * 0.01**2)
    r4 = (DATASETS["pinwheel"].sampler(40_000, _gen(10)).double() ** 2).sum(1) ** 2
    assert abs(r4.mean().item() - expected) < 5 * r4.std().item() / math.sqrt(len(r4))

"""service.jobs.sweeps: grid expansion (order, count, values), its validation, and comparison rows."""

from __future__ import annotations

import copy

import pytest

from service.jobs.sweeps import (
    MAX_SWEEP_RUNS,
    METRIC_COLUMNS,
    comparison_rows,
    expand_grid,
    markdown_table,
)
from service.ml.errors import ConfigError, UnknownNameError

BASE = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians"},
    "model_config": {"hidden_dims": [8, 8]},
    "solver": {"method": "dopri5", "rtol": 1e-5},
    "training": {"iterations": 10, "seed": 0},
    "name": "base run",
}


def test_cartesian_product_in_order_last_key_fastest() -> None:
    base = copy.deepcopy(BASE)
    grid = {"solver.atol": [1e-1, 1e-4], "training.lr": [1e-3, 1e-2, 1e-1]}
    combos = expand_grid(base, grid)
    assert len(combos) == 6
    expected = [(a, lr) for a in (1e-1, 1e-4) for lr in (1e-3, 1e-2, 1e-1)]
    assert [(v["solver.atol"], v["training.lr"]) for _, v in combos] == expected
    for request, values in combos:
        assert request["solver"] == {"method": "dopri5", "rtol": 1e-5, "atol": values["solver.atol"]}
        assert request["training"] == {"iterations": 10, "seed": 0, "lr": values["training.lr"]}
        assert request["model_config"] == BASE["model_config"]
        assert request["name"] == "base run"
    assert base == BASE  # the base request is not modified


def test_sections_missing_from_base_are_created() -> None:
    combos = expand_grid({"model": "ffjord", "dataset": {"id": "abc"}}, {"solver.method": ["rk4"]})
    assert combos == [
        ({"model": "ffjord", "dataset": {"id": "abc"}, "solver": {"method": "rk4"}}, {"solver.method": "rk4"})
    ]


def test_dataset_name_replaces_an_uploaded_id() -> None:
    base = {"model": "ffjord", "dataset": {"id": "upload-1"}}
    combos = expand_grid(base, {"dataset.name": ["8gaussians", "moons"]})
    assert [request["dataset"] for request, _ in combos] == [
        {"name": "8gaussians"},
        {"name": "moons"},
    ]


def test_dataset_names_checked_when_known() -> None:
    grid = {"dataset.name": ["moons", "spirals"]}
    assert len(expand_grid(BASE, grid, datasets=["moons", "spirals"])) == 2
    with pytest.raises(UnknownNameError, match="moons") as info:
        expand_grid(BASE, grid, datasets=["moons", "8gaussians"])
    assert info.value.value == "spirals"


def test_list_values_are_copied() -> None:
    grid = {"model_config.hidden_dims": [[8], [16, 16]]}
    combos = expand_grid(BASE, grid)
    assert [r["model_config"]["hidden_dims"] for r, _ in combos] == [[8], [16, 16]]
    combos[0][0]["model_config"]["hidden_dims"].append(99)
    assert grid["model_config.hidden_dims"][0] == [8]


def test_exactly_the_limit_is_allowed() -> None:
    assert len(expand_grid(BASE, {"training.seed": list(range(MAX_SWEEP_RUNS))})) == MAX_SWEEP_RUNS


@pytest.mark.parametrize(
    ("grid", "field", "message"),
    [
        ({}, "grid", "empty"),
        ({"optimizer.lr": [1e-3]}, "grid.optimizer.lr", "unknown grid path"),
        ({"atol": [1e-3]}, "grid.atol", "unknown grid path"),
        ({"solver.tolerance": [1e-3]}, "grid.solver.tolerance", "unknown field"),
        ({"training.momentum": [0.9]}, "grid.training.momentum", "unknown field"),
        ({"model_config.depth": [2]}, "grid.model_config.depth", "unknown field"),
        ({"dataset.id": ["abc"]}, "grid.dataset.id", "unknown field"),
        ({"name": ["a", "b"]}, "grid.name", "unknown grid path"),
        ({"solver.atol": 1e-3}, "grid.solver.atol", "must be a list"),
        ({"solver.atol": (1e-3, 1e-4)}, "grid.solver.atol", "must be a list"),
        ({"solver.atol": []}, "grid.solver.atol", "empty"),
        ({"solver.atol": [1e-3, 1e-4, 1e-3]}, "grid.solver.atol", "repeat"),
        ({"model_config.hidden_dims": [[8], [8]]}, "grid.model_config.hidden_dims", "repeat"),
        ({"solver.atol": [1e-3, -1.0]}, "grid.solver.atol", "invalid solver.atol"),
        ({"training.iterations": [0]}, "grid.training.iterations", "invalid training.iterations"),
        (
            {"model_config.divergence": ["nope"]},
            "grid.model_config.divergence",
            "invalid model_config",
        ),
        (
            {"training.seed": list(range(9)), "training.lr": [0.1 * (i + 1) for i in range(8)]},
            "grid",
            "more than the limit",
        ),
    ],
)
def test_invalid_grids_raise_config_error(grid: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        expand_grid(BASE, grid)
    assert info.value.field == field
    assert info.value.fix


def test_the_run_limit_is_checked_before_repeats() -> None:
    """100 000 seeds used to be scanned for repeats pairwise (minutes of CPU) before the count check."""
    with pytest.raises(ConfigError, match="more than the limit") as info:
        expand_grid(BASE, {"training.seed": [0] * 100_000})
    assert info.value.field == "grid" and info.value.value == 100_000


class _CountingFloat(float):
    """A float that counts how often it is compared with ``==``."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        _CountingFloat.comparisons += 1
        return float.__eq__(self, other)

    __hash__ = float.__hash__


def test_repeats_are_found_without_pairwise_comparison() -> None:
    _CountingFloat.comparisons = 0
    values = [_CountingFloat(10.0 ** -(i % 60 + 1)) for i in range(MAX_SWEEP_RUNS)]  # repeats at 60
    with pytest.raises(ConfigError, match="repeat") as info:
        expand_grid(BASE, {"solver.atol": values})
    assert info.value.value == 1e-1 and info.value.field == "grid.solver.atol"
    assert _CountingFloat.comparisons < MAX_SWEEP_RUNS  # pairwise: ~1800


@pytest.mark.parametrize(
    "values",
    [[1, 1.0], [{"a": 1, "b": [2]}, {"b": [2], "a": 1}], [[8, 8], [8.0, 8]]],
    ids=["int and float", "key order", "nested"],
)
def test_equal_values_written_differently_are_repeats(values: list) -> None:
    with pytest.raises(ConfigError, match="repeat"):
        expand_grid(BASE, {"model_config.hidden_dims": values})


def test_invalid_base_value_points_at_the_base() -> None:
    base = {**BASE, "training": {"batch_size": -1}}
    with pytest.raises(ConfigError) as info:
        expand_grid(base, {"solver.atol": [1e-3]})
    assert info.value.field == "base.training.batch_size"
    base = {**BASE, "model_config": {"activation": "sigmoid"}}
    with pytest.raises(ConfigError) as info:
        expand_grid(base, {"solver.atol": [1e-3]})
    assert info.value.field == "base.model_config.activation"


def test_base_model_must_be_registered() -> None:
    with pytest.raises(ConfigError) as info:
        expand_grid({"dataset": {"name": "moons"}}, {"solver.atol": [1e-3]})
    assert info.value.field == "base.model"
    with pytest.raises(UnknownNameError, match="ffjord"):
        expand_grid({**BASE, "model": "glow"}, {"solver.atol": [1e-3]})


def test_comparison_rows_match_runs() -> None:
    keys = ["solver.atol", "model_config.hidden_dims"]
    runs = [
        {
            "solver": {"atol": 1e-3},
            "model_config": {"hidden_dims": [8]},
            "status": "succeeded",
            "metrics": {
                "wall_clock_s": 12.5,
                "nfe_forward_mean": 26.5,
                "nfe_backward_mean": 32.0,
                "nfe_forward_last": 50,
                "train_loss": 2.9,
                "test_nll": 2.95,
                "test_nll_tight": 2.97,
                "test_nll_tight_gap": 0.03,
                "kl_to_truth": 0.05,
                "iterations_per_s": 4.0,
            },
        },
        {  # a local run from before NFE means: its last-iteration count is not shown as the mean
            "grid": {"solver.atol": 1e-6, "model_config.hidden_dims": [16]},
            "solver": {"atol": 1.0},
            "status": "succeeded",
            "metrics": {"final_loss": 2.7, "test_nll": 2.8, "nfe_forward": 50},
        },
        {"solver": {"atol": 1e-9}, "status": "failed", "metrics": None},
    ]
    rows = comparison_rows(runs, keys)
    assert [list(row) for row in rows] == [[*keys, *METRIC_COLUMNS, "status"]] * 3
    assert rows[0] == {
        "solver.atol": 1e-3,
        "model_config.hidden_dims": [8],
        "wall_clock_s": 12.5,
        "nfe_forward_mean": 26.5,
        "nfe_backward_mean": 32.0,
        "train_loss": 2.9,
        "test_nll": 2.95,
        "test_nll_tight": 2.97,
        "test_nll_tight_gap": 0.03,
        "kl_to_truth": 0.05,
        "status": "succeeded",
    }
    assert (rows[1]["solver.atol"], rows[1]["model_config.hidden_dims"]) == (1e-6, [16])
    assert rows[1]["nfe_forward_mean"] is None and rows[1]["test_nll_tight"] is None
    assert (rows[1]["train_loss"], rows[1]["test_nll"], rows[1]["wall_clock_s"]) == (2.7, 2.8, None)
    assert rows[2]["solver.atol"] == 1e-9 and rows[2]["model_config.hidden_dims"] is None
    assert all(rows[2][c] is None for c in METRIC_COLUMNS) and rows[2]["status"] == "failed"


def test_markdown_table() -> None:
    rows = comparison_rows([{"solver": {"atol": 1e-3}, "metrics": {"test_nll": 2.0}}], ["solver.atol"])
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("| solver.atol | wall_clock_s |")
    assert lines[2] == "| 0.001 | - | - | - | - | 2 | - | - | - | - |"
    assert markdown_table([]) == "(no runs)"

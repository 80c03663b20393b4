"""Parameter sweeps: expand a grid over a base train request, and tabulate the finished runs.

Pure logic over plain dicts (no DB, no FastAPI), so the API, the worker and the CLI share it. A grid
maps dotted paths to lists of values::

    {"solver.atol": [1e-1, 1e-4, 1e-9], "model_config.divergence": ["exact", "hutchinson"]}

Allowed paths are ``solver.<field>`` (``SolverConfig``), ``model_config.<field>`` (the config class
of ``base["model"]``), ``training.<field>`` (``TrainConfig``) and ``dataset.name``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from service.ml.errors import ConfigError, UnknownNameError
from service.ml.models import MODELS, parse_model_config
from service.ml.ode import SolverConfig
from service.ml.training import TrainConfig

__all__ = [
    "MAX_SWEEP_RUNS",
    "METRIC_COLUMNS",
    "SECTIONS",
    "comparison_rows",
    "expand_grid",
    "markdown_table",
]

MAX_SWEEP_RUNS = 64
"""Most runs one sweep may create (the product of the grid's list lengths)."""

SECTIONS = ("solver", "model_config", "training", "dataset")
METRIC_COLUMNS = (
    "wall_clock_s",
    "nfe_forward_mean",
    "nfe_backward_mean",
    "train_loss",
    "test_nll",
    "test_nll_tight",
    "test_nll_tight_gap",
    "kl_to_truth",
)
"""Per-run columns of a sweep table: NFE are means per training iteration; ``test_nll`` is scored at
the run's own solver, ``test_nll_tight`` at rtol = atol = 1e-8 on the first test points, and
``test_nll_tight_gap`` is their difference on those same points (``service.ml.rescore``)."""
_CONFIG_CLASSES: dict[str, type[BaseModel]] = {"solver": SolverConfig, "training": TrainConfig}


def _model_name(base: Mapping[str, Any]) -> str:
    name = base.get("model")
    if not isinstance(name, str):
        raise ConfigError(
            "the base train request has no model",
            value=name,
            fix=f"set base.model to one of: {', '.join(MODELS)}",
            field="base.model",
        )
    if name not in MODELS:
        raise UnknownNameError("model", name, list(MODELS))
    return name


def _fields(section: str, model: str) -> list[str]:
    if section == "dataset":
        return ["name"]
    cls = MODELS[model].config_class if section == "model_config" else _CONFIG_CLASSES[section]
    return list(cls.model_fields)


def _check_path(path: Any, model: str) -> tuple[str, str]:
    section, _, name = path.partition(".") if isinstance(path, str) else ("", "", "")
    if section not in SECTIONS or not name:
        raise ConfigError(
            f"unknown grid path {path!r}",
            value=path,
            fix="use section.field with section one of: " + ", ".join(SECTIONS),
            field=f"grid.{path}",
        )
    valid = _fields(section, model)
    if name not in valid:
        raise ConfigError(
            f"unknown field {name!r} in grid path {path!r}",
            value=path,
            fix=f"{section} fields are: " + ", ".join(f"{section}.{f}" for f in valid),
            field=f"grid.{path}",
        )
    return section, name


def _check_values(path: str, values: Any) -> list[Any]:
    """``values`` if it is a non-empty list (repeats are checked after the run count)."""
    if not isinstance(values, list):
        raise ConfigError(
            f"grid values of {path!r} must be a list, got {type(values).__name__}",
            value=values,
            fix=f'write e.g. "{path}": [value1, value2]',
            field=f"grid.{path}",
        )
    if not values:
        raise ConfigError(
            f"grid values of {path!r} are empty",
            value=values,
            fix="give at least one value, or leave the path out of the grid",
            field=f"grid.{path}",
        )
    return values


def _canonical(value: Any) -> Any:
    """``value`` with integral floats as ints, so equal JSON values get the same canonical text."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _check_repeats(path: str, values: list[Any]) -> None:
    """Refuse a value listed twice: one hash of its canonical JSON each, linear in the list."""
    seen: set[str] = set()
    for value in values:
        key = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), default=repr)
        if key in seen:
            raise ConfigError(
                f"grid values of {path!r} repeat {value!r}",
                value=value,
                fix="list each value once; repeated runs add nothing to a sweep",
                field=f"grid.{path}",
            )
        seen.add(key)


def _blame(where: str, combo: Mapping[str, Any]) -> str:
    """``grid.<path>`` when the grid sets ``where`` (or a parent of it), else ``base.<where>``."""
    for path in combo:
        if where == path or where.startswith(f"{path}."):
            return f"grid.{path}"
    return f"base.{where}"


def _validate_request(request: dict[str, Any], model: str, combo: Mapping[str, Any]) -> None:
    """Build each config of one combination so a bad value fails at sweep creation, not mid-run."""
    for section, cls in _CONFIG_CLASSES.items():
        try:
            cls.model_validate(request.get(section) or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = f"{section}." + ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"invalid {where} in sweep combination {dict(combo)}: {first['msg']}",
                value=first.get("input"),
                fix=f"change the values of grid.{where} or base.{where}",
                field=_blame(where, combo),
            ) from None
    try:
        parse_model_config(model, request.get("model_config"))
    except ConfigError as exc:
        exc.field = _blame(exc.field or "model_config", combo)
        raise


def _apply(request: dict[str, Any], section: str, name: str, value: Any) -> None:
    if section == "dataset":
        request["dataset"] = {"name": value}  # a named built-in replaces an uploaded dataset id
        return
    current = request.get(section)
    request[section] = {**(current if isinstance(current, Mapping) else {}), name: value}


def expand_grid(
    base: Mapping[str, Any],
    grid: Mapping[str, list[Any]],
    datasets: Collection[str] | None = None,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every combination of ``grid`` applied to ``base``: ``[(train_request, grid_values), ...]``.

    The order is the cartesian product over the grid's keys in the order given, the last key varying
    fastest. ``base`` is not modified. When ``datasets`` is given (e.g. ``DATASETS`` keys),
    ``dataset.name`` values must be among them.

    Raises:
        ConfigError: the grid is empty or not a mapping, a path is unknown, a value list is not a
            list or empty, there are more than ``MAX_SWEEP_RUNS`` combinations (checked before
            anything that grows with the lists), a list repeats a value (equal canonical JSON), or a
            combination fails config validation.
        UnknownNameError: ``base["model"]`` is not a registered model, or a ``dataset.name`` value
            is not in ``datasets``.
    """
    model = _model_name(base)
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError(
            "the sweep grid is empty",
            value=grid,
            fix='map at least one path to a list, e.g. {"solver.atol": [1e-3, 1e-5]}',
            field="grid",
        )
    targets = {path: _check_path(path, model) for path in grid}
    values = {path: _check_values(path, grid[path]) for path in grid}
    count = math.prod(len(v) for v in values.values())
    if count > MAX_SWEEP_RUNS:
        raise ConfigError(
            f"the grid has {count} combinations, more than the limit of {MAX_SWEEP_RUNS}",
            value=count,
            fix=f"drop values or paths until the product of list lengths is <= {MAX_SWEEP_RUNS}",
            field="grid",
        )
    for path, listed in values.items():
        _check_repeats(path, listed)
    for name in values.get("dataset.name", []) if datasets is not None else []:
        if name not in datasets:
            raise UnknownNameError("dataset", str(name), list(datasets))
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for combination in itertools.product(*values.values()):
        combo = dict(zip(values, combination, strict=True))
        request = copy.deepcopy(dict(base))
        for path, value in combo.items():
            _apply(request, *targets[path], copy.deepcopy(value))
        _validate_request(request, model, combo)
        out.append((request, combo))
    return out


def _lookup(run: Mapping[str, Any], path: str) -> Any:
    grid = run.get("grid")
    if isinstance(grid, Mapping) and path in grid:
        return grid[path]
    node: Any = run
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def comparison_rows(runs: Sequence[Mapping[str, Any]], grid_keys: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per run: its grid values, then ``METRIC_COLUMNS``, then ``status``.

    A run is a plain dict shaped like the run resource: ``status``, ``metrics`` (any of
    ``METRIC_COLUMNS``; ``final_loss`` is accepted for ``train_loss``), the request sections
    (``solver``, ``training``, ...) and optionally ``grid`` (``{path: value}``), which takes
    precedence when looking up a grid value. Missing metrics (a failed run) are ``None``.
    """
    rows = []
    for run in runs:
        metrics = run.get("metrics") or {}
        row = {key: _lookup(run, key) for key in grid_keys}
        for column in METRIC_COLUMNS:
            value = metrics.get(column)
            if value is None and column == "train_loss":
                value = metrics.get("final_loss")
            row[column] = value
        row["status"] = run.get("status")
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` (e.g. from ``comparison_rows``) as a GitHub-flavoured markdown table."""
    if not rows:
        return "(no runs)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)

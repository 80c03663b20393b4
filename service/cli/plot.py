"""``odeserve plot`` and ``odeserve sweep``: figures of a checkpoint, and local parameter sweeps.

Register on the main app with ``app.command("plot")(plot)`` and ``app.command("sweep")(sweep)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.common import cli_errors, configure_threads
from service.jobs.sweeps import comparison_rows, expand_grid, markdown_table
from service.ml.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from service.ml.data import DATASETS, load_dataset
from service.ml.errors import CheckpointError, ConfigError, DataError, OdeServeError, UnknownNameError
from service.ml.models import MODELS
from service.ml.ode import SolverConfig
from service.ml.rescore import tight_test_nll
from service.ml.training import TrainConfig, fit, init_model, resolve_training
from service.plots import (
    density_png,
    flow_gif,
    flow_png,
    forecast_png,
    loss_png,
    samples_png,
    sweep_png,
)
from service.schemas.json_values import finite_or_none
from service.storage.models_store import atomic_write

__all__ = ["PLOT_KINDS", "plot", "sweep"]

PLOT_KINDS = ("density", "samples", "loss", "flow", "flow_gif", "forecast")
FORECAST_KEYS = ("times", "values", "predict_times", "mean", "std")
Threads = Annotated[int | None, typer.Option(help="Torch threads (default: cores, max 8).")]


def _points(loaded: LoadedCheckpoint, dataset: str | None, seed: int) -> Any:
    name = dataset or (loaded.meta.get("extra") or {}).get("dataset")
    if name is None:
        raise DataError("the checkpoint does not record its dataset", fix="pass --dataset NAME")
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, list(DATASETS))
    return load_dataset(name, seed=seed)


def _forecast(input_path: Path | None) -> bytes:
    if input_path is None:
        raise ConfigError(
            "--kind forecast needs --input",
            fix=f"give a JSON file with keys {', '.join(FORECAST_KEYS)} (a /predict request "
            "merged with its response)",
            field="input",
        )
    try:
        raw = json.loads(input_path.read_text())
        args = [raw[key] for key in FORECAST_KEYS]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"cannot read the forecast JSON: {exc}",
            fix=f"give a JSON object with keys {', '.join(FORECAST_KEYS)}",
        ) from None
    return forecast_png(*args)


@cli_errors
def plot(
    out: Annotated[Path, typer.Option(help="Image file to write (.png; .gif for flow_gif).")],
    kind: Annotated[str, typer.Option(help=f"One of: {', '.join(PLOT_KINDS)}.")] = "density",
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint directory (all kinds but forecast).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Built-in dataset (default: the checkpoint's).")] = None,
    n: Annotated[int, typer.Option("-n", "--n", min=1, max=5000, help="Samples drawn.")] = 1000,
    seed: Annotated[int, typer.Option(help="Dataset split and sampling seed.")] = 0,
    input: Annotated[  # noqa: A002
        Path | None, typer.Option(help="Forecast JSON: times, values, predict_times, mean, std.")
    ] = None,
    threads: Threads = None,
) -> None:
    """Draw a figure of a trained checkpoint (or of a forecast JSON) and write it to OUT."""
    configure_threads(threads)
    if kind not in PLOT_KINDS:
        raise UnknownNameError("plot kind", kind, list(PLOT_KINDS))
    if kind == "forecast":
        atomic_write(out, _forecast(input))
        typer.echo(f"wrote {out}")
        return
    if checkpoint is None:
        raise ConfigError(f"--kind {kind} needs --checkpoint", fix="pass --checkpoint DIR")
    loaded = load_checkpoint(checkpoint, with_state=kind == "loss")
    if kind == "loss":
        if loaded.state is None:
            raise CheckpointError(
                "the checkpoint has no training history",
                fix="plot a checkpoint saved with its training state (odeserve sweep --out-dir)",
            )
        image = loss_png(loaded.state.history)
    else:
        data = _points(loaded, dataset, seed)
        makers: dict[str, Callable[[], bytes]] = {
            "density": lambda: density_png(loaded.model, data.test, data.true_log_prob),
            "samples": lambda: samples_png(loaded.model, data.test, n, seed),
            "flow": lambda: flow_png(loaded.model, data.test),
            "flow_gif": lambda: flow_gif(loaded.model, data.test),
        }
        image = makers[kind]()
    atomic_write(out, image)
    typer.echo(f"wrote {out}")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def _parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["solver.atol=1e-1,1e-4", "model_config.hidden_dims=[[8,8],[16,16]]"]`` -> grid dict."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not text.strip():
            raise ConfigError(
                f"--grid {item!r} is not PATH=VALUES",
                value=item,
                fix="e.g. --grid solver.atol=1e-1,1e-4 or --grid 'model_config.hidden_dims=[[8],[16]]'",
                field="grid",
            )
        text = text.strip()
        grid[path.strip()] = (
            _parse_value(text) if text.startswith("[") else [_parse_value(v) for v in text.split(",")]
        )
    return grid


def _run_one(request: dict[str, Any], cache: dict[tuple[str, int], Any]) -> tuple[dict, Any]:
    """Train one combination; returns (run dict, (model, config, result)) or a failed run dict."""
    solver = SolverConfig.model_validate(request.get("solver") or {})
    config = TrainConfig.model_validate(request.get("training") or {})
    config = resolve_training(config, request["model"])  # the checkpoint records the rate that ran
    key = (request["dataset"]["name"], config.seed)
    if key not in cache:
        cache[key] = load_dataset(key[0], seed=config.seed)
    data = cache[key]
    model = init_model(request["model"], request.get("model_config"), data.dim, solver, config.seed)
    result = fit(model, data, config)
    metrics = {
        **result.metrics,
        **tight_test_nll(model, data.test),
        "train_loss": result.final_loss,
        "wall_clock_s": result.wall_s,
        **result.nfe_metrics(),
    }
    return {"status": "succeeded", "metrics": metrics}, (model, config, result, key[0])


@cli_errors
def sweep(
    dataset: Annotated[str, typer.Option(help=f"Built-in dataset: {', '.join(DATASETS)}.")],
    grid: Annotated[list[str], typer.Option(help="PATH=V1,V2 (repeatable), e.g. solver.atol=1e-1,1e-4.")],
    model: Annotated[str, typer.Option(help=f"One of: {', '.join(MODELS)}.")] = "ffjord",
    base: Annotated[
        Path | None, typer.Option(help="JSON train request to start from (as for POST /train).")
    ] = None,
    iterations: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Write run-NN checkpoints, sweep.json and sweep.png here.")
    ] = None,
    threads: Threads = None,
) -> None:
    """Train every combination of a grid locally and print a comparison table (markdown)."""
    configure_threads(threads)
    request: dict[str, Any] = json.loads(base.read_text()) if base is not None else {}
    request.setdefault("model", model)
    request.setdefault("dataset", {"name": dataset})
    training = {"iterations": iterations, "batch_size": batch_size, "seed": seed}
    request["training"] = {
        **(request.get("training") or {}),
        **{k: v for k, v in training.items() if v is not None},
    }
    parsed = _parse_grid(grid)
    combos = expand_grid(request, parsed, datasets=list(DATASETS))
    for run_request, _ in combos:  # local sweeps train on built-ins only
        name = (run_request.get("dataset") or {}).get("name")
        if name not in DATASETS:
            raise UnknownNameError("dataset", str(name), list(DATASETS))
    runs: list[dict[str, Any]] = []
    cache: dict[tuple[str, int], Any] = {}
    for index, (run_request, values) in enumerate(combos):
        label = ", ".join(f"{k}={v}" for k, v in values.items())
        typer.echo(f"[{index + 1}/{len(combos)}] {label}", err=True)
        try:
            run, trained = _run_one(run_request, cache)
        except OdeServeError as exc:
            run, trained = {"status": "failed", "metrics": {}, "error": str(exc)}, None
            typer.echo(f"  failed: {exc}", err=True)
        run |= {"grid": values, "request": run_request}
        if out_dir is not None and trained is not None:
            network, config, result, name = trained
            run["checkpoint"] = f"run-{index:02d}"  # from the index, never from user strings
            save_checkpoint(
                out_dir / run["checkpoint"],
                network,
                train_config=config,
                state=result.state,
                metrics=run["metrics"],
                extra={"dataset": name, "sweep_grid": values},
            )
        runs.append(run)
    rows = comparison_rows(runs, list(parsed))
    typer.echo(markdown_table(rows))
    if out_dir is not None:
        summary = finite_or_none({"base": request, "grid": parsed, "rows": rows, "runs": runs})
        text = json.dumps(summary, indent=2, default=str, allow_nan=False)
        atomic_write(out_dir / "sweep.json", text.encode())
        atomic_write(out_dir / "sweep.png", sweep_png(rows, next(iter(parsed))))
        typer.echo(f"wrote {out_dir / 'sweep.json'} and {out_dir / 'sweep.png'}", err=True)

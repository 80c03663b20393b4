"""``odeserve`` console script: train, density, sample, predict (and the service commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from service.cli.common import cli_errors, configure_threads, write_rows
from service.cli.plot import plot, sweep
from service.cli.predict import predict
from service.cli.series_files import read_series_file
from service.cli.up import migrate, reconcile, up
from service.ml.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from service.ml.data import DATASETS, load_dataset, point_data_from_tensor, points_from_csv
from service.ml.errors import ConfigError, DataError, UnknownNameError
from service.ml.models import MODELS, DensityModel
from service.ml.ode import SolverConfig
from service.ml.rescore import tight_test_nll
from service.ml.series import SERIES_DATASETS, load_series_dataset, series_data_from_list
from service.ml.training import ProgressEvent, TrainConfig, fit, init_model, resolve_training

app = typer.Typer(help="Train and serve continuous-time generative models.", no_args_is_help=True)

Threads = Annotated[int | None, typer.Option(help="Torch threads (default: cores, max 8).")]


def _load_training_data(dataset: str, seed: int):  # noqa: ANN202 - PointData or series data
    path = Path(dataset)
    if dataset in DATASETS:
        return load_dataset(dataset, seed=seed)
    if dataset in SERIES_DATASETS:
        return load_series_dataset(dataset, seed=seed)
    if path.suffix.lower() in (".csv", ".json") or path.exists():
        if not path.is_file():
            raise DataError(f"no such file: {dataset}", fix="give a readable CSV or JSON path")
        series = read_series_file(path)
        if series is not None:
            return series_data_from_list(path.stem, series, seed=seed)
        points = points_from_csv(path.read_bytes())
        return point_data_from_tensor(path.stem, points, seed=seed)
    files = "<path to a .csv file (points or series_id,time,...) or a .json file of series>"
    raise UnknownNameError("dataset", dataset, [*DATASETS, *SERIES_DATASETS, files])


def _model_config(model: str, text: str | None, divergence: str | None, dims: str | None) -> dict:
    """``--model-config`` JSON overlaid with the shortcut flags (``--hidden-dims``: the ODE's widths)."""
    example = "e.g. --model-config '{\"latent_dim\": 4}'"
    try:
        config = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-config is not valid JSON: {exc.msg}", fix=example) from None
    if not isinstance(config, dict):
        raise ConfigError("--model-config must be a JSON object", fix=example)
    widths = "dynamics_hidden" if model == "latent_ode" else "hidden_dims"
    flags = {"divergence": divergence, widths: _parse_dims(dims)}
    return config | {k: v for k, v in flags.items() if v is not None}


def _require_points(model: DensityModel, checkpoint: Path) -> None:
    if model.data_kind != "points":
        raise DataError(
            f"{checkpoint} holds a {model.name} model of time series",
            fix="use odeserve predict --checkpoint DIR --input series.json",
            field="checkpoint",
        )


def _parse_dims(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DataError(
            f"--hidden-dims must be comma-separated integers, got {text!r}",
            fix="e.g. --hidden-dims 64,64",
        ) from None


@app.command()
@cli_errors
def train(
    dataset: Annotated[
        str,
        typer.Option(help=f"Built-in ({', '.join([*DATASETS, *SERIES_DATASETS])}), a CSV or JSON path."),
    ],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    model: Annotated[str, typer.Option(help=f"One of: {', '.join(MODELS)}.")] = "ffjord",
    iterations: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
    objective: Annotated[
        str | None, typer.Option(help="likelihood (default) | flow_matching (ffjord).")
    ] = None,
    coupling: Annotated[str | None, typer.Option(help="flow_matching: ot (default) | independent.")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Time budget in seconds.")] = None,
    method: Annotated[
        str | None, typer.Option(help="Solver method, e.g. dopri5, rk4 (default: the model's).")
    ] = None,
    step_size: Annotated[float | None, typer.Option(help="Step of fixed-step methods.")] = None,
    rtol: Annotated[float | None, typer.Option()] = None,
    atol: Annotated[float | None, typer.Option()] = None,
    adjoint: Annotated[bool | None, typer.Option("--adjoint/--no-adjoint")] = None,
    max_num_steps: Annotated[int | None, typer.Option()] = None,
    divergence: Annotated[str | None, typer.Option(help="exact | hutchinson (ffjord).")] = None,
    hidden_dims: Annotated[str | None, typer.Option(help="Comma-separated widths.")] = None,
    model_config: Annotated[
        str | None, typer.Option(help="Model config as JSON, e.g. '{\"latent_dim\": 4}'.")
    ] = None,
    threads: Threads = None,
) -> None:
    """Train a model and write a checkpoint directory."""
    configure_threads(threads)
    if model not in MODELS:
        raise UnknownNameError("model", model, list(MODELS))
    solver_args = {
        "method": method,
        "rtol": rtol,
        "atol": atol,
        "adjoint": adjoint,
        "max_num_steps": max_num_steps,
        "step_size": step_size,
    }
    given = {k: v for k, v in solver_args.items() if v is not None}
    solver = SolverConfig(**given) if given else None  # None: the model's default solver
    train_args = {
        "iterations": iterations,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "objective": objective,
        "coupling": coupling,
        "max_seconds": max_seconds,
    }
    config = TrainConfig(**{k: v for k, v in train_args.items() if v is not None})
    config = resolve_training(config, model)  # the checkpoint records the rate that ran
    model_params = _model_config(model, model_config, divergence, hidden_dims)
    data = _load_training_data(dataset, seed)
    if data.kind != MODELS[model].data_kind:
        raise ConfigError(
            f"model {model} trains on {MODELS[model].data_kind} data but {dataset} holds {data.kind}",
            value=dataset,
            fix=f"pick a {MODELS[model].data_kind} dataset or another --model",
        )
    network = init_model(model, model_params, data.dim, solver, config.seed)
    with Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f} nfe {task.fields[nfe]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=config.iterations, loss=float("nan"), nfe="-")

        def progress(event: ProgressEvent) -> None:
            bar.update(
                task,
                completed=event.iteration,
                loss=event.loss,
                nfe=f"{event.nfe_forward}/{event.nfe_backward}",
            )

        result = fit(network, data, config, on_progress=progress)
    metrics = {
        **result.metrics,
        **tight_test_nll(network, data.test),
        "final_loss": result.final_loss,
        "wall_clock_s": result.wall_s,
        **result.nfe_metrics(),
    }
    save_checkpoint(
        out, network, train_config=config, state=result.state, metrics=metrics, extra={"dataset": data.name}
    )
    summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    typer.echo(f"saved {out}: {summary}")


def _load_points_model(checkpoint: Path, threads: int | None) -> LoadedCheckpoint:
    configure_threads(threads)
    loaded = load_checkpoint(checkpoint)
    _require_points(loaded.model, checkpoint)
    return loaded


@app.command()
@cli_errors
def density(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint directory.")],
    input: Annotated[Path, typer.Option(help="CSV of points, one per row.")],  # noqa: A002
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    threads: Threads = None,
) -> None:
    """Natural-log density of each input row."""
    loaded = _load_points_model(checkpoint, threads)
    points = points_from_csv(input.read_bytes(), min_points=1)
    if points.shape[1] != loaded.model.dim:
        raise DataError(
            f"points have {points.shape[1]} columns but the model is {loaded.model.dim}-D",
            value=points.shape[1],
            fix=f"give {loaded.model.dim} comma-separated values per row",
        )
    with torch.no_grad():
        values = loaded.model.log_prob(points.to(next(loaded.model.parameters()).dtype))
    write_rows(([v] for v in values.tolist()), output)


@app.command()
@cli_errors
def sample(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint directory.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, max=1_000_000, help="How many.")] = 1000,
    seed: Annotated[int, typer.Option()] = 0,
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    threads: Threads = None,
) -> None:
    """Draw N samples (rows of D comma-separated floats)."""
    loaded = _load_points_model(checkpoint, threads)
    with torch.no_grad():
        samples = loaded.model.sample(n, torch.Generator().manual_seed(seed))
    write_rows(samples.tolist(), output)


app.command("plot")(plot)
app.command("predict")(predict)
app.command("sweep")(sweep)
app.command("up")(up)
app.command("migrate")(migrate)
app.command("reconcile")(reconcile)

if __name__ == "__main__":  # pragma: no cover
    app()

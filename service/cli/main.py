"""``odeserve`` console script: train, density, sample (and the service commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from service.cli.common import cli_errors, configure_threads, write_rows
from service.cli.plot import plot, sweep
from service.cli.up import migrate, up
from service.ml.checkpoint import load_checkpoint, save_checkpoint
from service.ml.data import DATASETS, load_dataset, point_data_from_tensor, points_from_csv
from service.ml.errors import DataError, UnknownNameError
from service.ml.models import MODELS
from service.ml.ode import SolverConfig
from service.ml.training import ProgressEvent, TrainConfig, fit, init_model

app = typer.Typer(help="Train and serve continuous-time generative models.", no_args_is_help=True)

Threads = Annotated[int | None, typer.Option(help="Torch threads (default: cores, max 8).")]


def _load_training_data(dataset: str, seed: int):  # noqa: ANN202 - PointData or series data
    path = Path(dataset)
    if dataset in DATASETS:
        return load_dataset(dataset, seed=seed)
    if path.suffix.lower() == ".csv" or path.exists():
        if not path.is_file():
            raise DataError(f"no such CSV file: {dataset}", fix="give a readable CSV path")
        points = points_from_csv(path.read_bytes())
        return point_data_from_tensor(path.stem, points, seed=seed)
    raise UnknownNameError("dataset", dataset, [*DATASETS, "<path to a .csv file>"])


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
    dataset: Annotated[str, typer.Option(help=f"Built-in ({', '.join(DATASETS)}) or a CSV path.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    model: Annotated[str, typer.Option(help=f"One of: {', '.join(MODELS)}.")] = "ffjord",
    iterations: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
    method: Annotated[str | None, typer.Option(help="Solver method, e.g. dopri5, rk4.")] = None,
    rtol: Annotated[float | None, typer.Option()] = None,
    atol: Annotated[float | None, typer.Option()] = None,
    adjoint: Annotated[bool | None, typer.Option("--adjoint/--no-adjoint")] = None,
    max_num_steps: Annotated[int | None, typer.Option()] = None,
    divergence: Annotated[str | None, typer.Option(help="exact | hutchinson (ffjord).")] = None,
    hidden_dims: Annotated[str | None, typer.Option(help="Comma-separated widths.")] = None,
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
    }
    solver = SolverConfig(**{k: v for k, v in solver_args.items() if v is not None})
    train_args = {"iterations": iterations, "batch_size": batch_size, "lr": lr, "seed": seed}
    config = TrainConfig(**{k: v for k, v in train_args.items() if v is not None})
    model_args = {"divergence": divergence, "hidden_dims": _parse_dims(hidden_dims)}
    model_config = {k: v for k, v in model_args.items() if v is not None}
    data = _load_training_data(dataset, seed)
    network = init_model(model, model_config, data.dim, solver, config.seed)
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
        "final_loss": result.final_loss,
        "wall_clock_s": result.wall_s,
        "nfe_forward": result.nfe_forward,
        "nfe_backward": result.nfe_backward,
    }
    save_checkpoint(out, network, train_config=config, metrics=metrics, extra={"dataset": data.name})
    summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    typer.echo(f"saved {out}: {summary}")


@app.command()
@cli_errors
def density(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint directory.")],
    input: Annotated[Path, typer.Option(help="CSV of points, one per row.")],  # noqa: A002
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    threads: Threads = None,
) -> None:
    """Natural-log density of each input row."""
    configure_threads(threads)
    loaded = load_checkpoint(checkpoint)
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
    configure_threads(threads)
    loaded = load_checkpoint(checkpoint)
    with torch.no_grad():
        samples = loaded.model.sample(n, torch.Generator().manual_seed(seed))
    write_rows(samples.tolist(), output)


app.command("plot")(plot)
app.command("sweep")(sweep)
app.command("up")(up)
app.command("migrate")(migrate)

if __name__ == "__main__":  # pragma: no cover
    app()

"""``odeserve predict``: a latent ODE checkpoint's posterior prediction for one series (as JSON).

Input JSON: ``{"times": [...], "values": [[...]], "predict_times": [...], "n_samples": 20,
"seed": 0}`` (``null`` marks a missing value; ``n_samples`` and ``seed`` optional). Output JSON:
``{"predict_times", "mean": [[...]], "std": [[...]], "n_samples", "seed"}`` with mean and std (P, D),
the same shape ``POST /predict`` returns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from service.cli.common import cli_errors, configure_threads
from service.cli.series_files import read_json
from service.ml.checkpoint import load_checkpoint
from service.ml.errors import DataError
from service.schemas.json_values import json_floats

__all__ = ["predict"]

REQUIRED = ("times", "values", "predict_times")
OPTIONAL = ("n_samples", "seed")


def _check_input(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DataError(
            f"the input must be a JSON object, got {type(raw).__name__}",
            fix='send {"times": [...], "values": [[...]], "predict_times": [...]}',
            field="input",
        )
    missing = [k for k in REQUIRED if k not in raw]
    unknown = sorted(set(raw) - {*REQUIRED, *OPTIONAL})
    if missing or unknown:
        what = f"missing {', '.join(missing)}" if missing else f"unknown keys {', '.join(unknown)}"
        raise DataError(
            f"the input has {what}",
            fix=f"give {', '.join(REQUIRED)} (and optionally {', '.join(OPTIONAL)})",
            field=(missing or unknown)[0],
        )
    for key in ("times", "predict_times"):
        if not isinstance(raw[key], list) or any(isinstance(t, list | dict) for t in raw[key]):
            raise DataError(f"{key} must be a flat list of numbers (one series)", field=key)
    values = raw["values"]
    if not isinstance(values, list) or not all(isinstance(row, list) for row in values):
        raise DataError("values must be a list of rows", fix="send [[v, ...], ...]", field="values")
    for key, low, high in (("n_samples", 0, 10_000), ("seed", 0, 2**31 - 1)):
        value = raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DataError(f"{key} must be an integer in [{low}, {high}], got {value!r}", field=key)
    return raw


@cli_errors
def predict(
    checkpoint: Annotated[Path, typer.Option(help="Latent ODE checkpoint directory.")],
    input: Annotated[  # noqa: A002
        Path, typer.Option(help="JSON: times, values, predict_times[, n_samples, seed].")
    ],
    output: Annotated[Path | None, typer.Option(help="Write the JSON here instead of stdout.")] = None,
    n_samples: Annotated[int | None, typer.Option(help="Overrides the input's n_samples.")] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: cores, max 8).")] = None,
) -> None:
    """Posterior predictive mean and std of a latent ODE at predict_times (JSON)."""
    configure_threads(threads)
    request = _check_input(read_json(input))
    loaded = load_checkpoint(checkpoint)
    model = loaded.model
    if model.data_kind != "series":
        raise DataError(
            f"{checkpoint} holds a {model.name} model of points; predict needs a latent ODE",
            fix="use odeserve density / sample for point models",
            field="checkpoint",
        )
    rows = request["values"]
    values = [[0.0 if v is None else v for v in row] for row in rows]
    mask = [[0.0 if v is None else 1.0 for v in row] for row in rows]
    samples = n_samples if n_samples is not None else int(request.get("n_samples", 20))
    seed = int(request.get("seed", 0))
    with torch.no_grad():
        mean, std = model.predict(  # type: ignore[operator]
            request["times"],
            values,
            mask,
            request["predict_times"],
            n_samples=samples,
            generator=torch.Generator().manual_seed(seed),
        )
    result = {
        "predict_times": request["predict_times"],
        "mean": json_floats(mean),
        "std": json_floats(std),
        "n_samples": samples,
        "seed": seed,
    }
    text = json.dumps(result) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(output)

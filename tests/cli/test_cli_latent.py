"""``odeserve train --model latent_ode`` and ``odeserve predict`` (in-process), and their errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from service.cli.main import app
from service.ml.checkpoint import load_checkpoint

runner = CliRunner()
SMALL = '{"latent_dim": 3, "encoder_hidden": 8, "decoder_hidden": [8], "iwae_samples": 2}'
FAST = ["--model", "latent_ode", "--iterations", "4", "--batch-size", "16", "--threads", "1"]
FAST += ["--model-config", SMALL, "--hidden-dims", "8", "--rtol", "1e-3", "--atol", "1e-4"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_latent") / "ck"
    result = runner.invoke(app, ["train", "--dataset", "spirals", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "test_rmse_extrap" in result.output
    return out


def test_train_writes_a_latent_checkpoint(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    assert loaded.model.name == "latent_ode" and loaded.model.dim == 2
    assert loaded.model.config.dynamics_hidden == (8,) and loaded.model.config.latent_dim == 3
    assert math.isfinite(loaded.metrics["test_mse_extrap"])


def test_predict_round_trip_matches_the_core(checkpoint: Path, tmp_path: Path) -> None:
    request = {
        "times": [0.0, 0.5, 1.0, 1.5],
        "values": [[0.1, 0.2], [0.3, None], [0.2, 0.4], [0.0, 0.5]],
        "predict_times": [0.25, 2.0, 3.5],
        "n_samples": 6,
        "seed": 3,
    }
    source, out = tmp_path / "series.json", tmp_path / "out.json"
    source.write_text(json.dumps(request))
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(source)]
    result = runner.invoke(app, [*args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    assert got["predict_times"] == request["predict_times"] and got["n_samples"] == 6
    assert [len(row) for row in got["mean"]] == [2, 2, 2] and [len(row) for row in got["std"]] == [2, 2, 2]
    mean, std = load_checkpoint(checkpoint).model.predict(
        request["times"],
        [[0.1, 0.2], [0.3, 0.0], [0.2, 0.4], [0.0, 0.5]],
        [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]],
        request["predict_times"],
        n_samples=6,
        generator=torch.Generator().manual_seed(3),
    )
    assert got["mean"] == mean.tolist() and got["std"] == std.tolist()
    printed = runner.invoke(app, args)
    assert printed.exit_code == 0 and json.loads(printed.stdout) == got


def test_train_on_a_long_format_csv(tmp_path: Path) -> None:
    rows = [f"{sid},{0.25 * j},{math.sin(0.25 * j + sid)}" for sid in range(6) for j in range(8)]
    source = tmp_path / "waves.csv"
    source.write_text("series_id,time,value_1\n" + "\n".join(rows) + "\n")
    out = tmp_path / "ck"
    result = runner.invoke(app, ["train", "--dataset", str(source), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out).model.dim == 1


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{", "not valid JSON"),
        ('{"times": [0, 1]}', "missing values, predict_times"),
        ('{"times": [1, 0], "values": [[1, 1], [2, 2]], "predict_times": [2]}', "not sorted"),
        ('{"times": [0, 1], "values": [[1], [2]], "predict_times": [2]}', "values must have shape"),
        ('{"times": [0, 1], "values": [[1, 1], [2, 2]], "predict_times": [2], "n_samples": -1}', "n_samples"),
    ],
)
def test_predict_errors_are_one_line(checkpoint: Path, tmp_path: Path, content: str, needle: str) -> None:
    source = tmp_path / "bad.json"
    source.write_text(content)
    result = runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), "--input", str(source)])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output
    assert needle in result.output


def test_model_and_data_kind_mismatch_and_point_commands_on_latent(checkpoint: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "x")
    ffjord = runner.invoke(app, ["train", "--dataset", "periodic", "--out", out, "--iterations", "1"])
    assert ffjord.exit_code == 2 and "ffjord trains on points data" in ffjord.output
    sample = runner.invoke(app, ["sample", "--checkpoint", str(checkpoint), "-n", "2"])
    assert sample.exit_code == 2 and "odeserve predict" in sample.output

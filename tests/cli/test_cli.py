"""The ``odeserve`` CLI end to end (in-process): train -> density -> sample, and clean errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from service.cli.main import app
from service.ml.checkpoint import load_checkpoint

runner = CliRunner()
FAST = ["--iterations", "15", "--batch-size", "64", "--hidden-dims", "16,16", "--threads", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ck"
    result = runner.invoke(app, ["train", "--dataset", "8gaussians", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "saved" in result.output and "test_nll" in result.output
    return out


def test_train_writes_a_loadable_checkpoint_with_metrics(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint, with_state=True)
    assert loaded.model.dim == 2 and loaded.meta["extra"]["dataset"] == "8gaussians"
    assert math.isfinite(loaded.metrics["test_nll"]) and loaded.metrics["nfe_forward_mean"] > 0
    assert loaded.state is not None and loaded.state.iteration == 15


def test_density_prints_one_log_density_per_row(checkpoint: Path, tmp_path: Path) -> None:
    points = tmp_path / "points.csv"
    points.write_text("x,y\n0.5,1.2\n-1,0\n2.0,2.0\n")
    out = tmp_path / "density.csv"
    result = runner.invoke(
        app, ["density", "--checkpoint", str(checkpoint), "--input", str(points), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    values = [float(line) for line in out.read_text().splitlines()]
    model = load_checkpoint(checkpoint).model
    with torch.no_grad():
        expected = model.log_prob(torch.tensor([[0.5, 1.2], [-1.0, 0.0], [2.0, 2.0]])).tolist()
    assert values == pytest.approx(expected, abs=1e-6)


def test_sample_is_reproducible_for_a_seed(checkpoint: Path) -> None:
    first = runner.invoke(app, ["sample", "--checkpoint", str(checkpoint), "-n", "7", "--seed", "3"])
    again = runner.invoke(app, ["sample", "--checkpoint", str(checkpoint), "-n", "7", "--seed", "3"])
    assert first.exit_code == 0 and first.output == again.output
    rows = [line.split(",") for line in first.output.splitlines()]
    assert len(rows) == 7 and all(len(row) == 2 and math.isfinite(float(v)) for row in rows for v in row)


def test_train_on_a_csv_file(tmp_path: Path) -> None:
    data = tmp_path / "mine.csv"
    generator = torch.Generator().manual_seed(0)
    data.write_text("".join(f"{v:.5f}\n" for v in (torch.randn(200, generator=generator) * 2 + 1).tolist()))
    out = tmp_path / "ck"
    result = runner.invoke(app, ["train", "--dataset", str(data), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out).model.dim == 1


def test_train_a_real_table_by_flow_matching(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    args = ["train", "--dataset", "wine", "--out", str(out), "--objective", "flow_matching", *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(out)
    assert loaded.model.dim == 13 and loaded.train_config.objective == "flow_matching"
    assert loaded.train_config.resolved_ema_decay == 0.999


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "nope", "--out", "x"], "unknown dataset 'nope'"),
        (["train", "--dataset", "wine", "--out", "x", "--coupling", "ot"], "drop training.coupling"),
        (["train", "--dataset", "8gaussians", "--out", "x", "--rtol", "0"], "rtol"),
        (["train", "--dataset", "8gaussians", "--out", "x", "--model", "glow"], "unknown model 'glow'"),
        (["sample", "--checkpoint", "/nonexistent/ck", "-n", "3"], "no checkpoint"),
    ],
)
def test_errors_are_one_clear_line_and_exit_nonzero(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_density_with_wrong_dimension_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    points = tmp_path / "bad.csv"
    points.write_text("1,2,3\n4,5,6\n")
    result = runner.invoke(app, ["density", "--checkpoint", str(checkpoint), "--input", str(points)])
    assert result.exit_code == 2
    assert "3 columns but the model is 2-D" in result.output and "Traceback" not in result.output

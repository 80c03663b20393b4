"""The training-curve picture of bench_train: drawn from its JSON, written as a PNG."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.train_curves import curves_png, main, short_label


def _results() -> dict:
    def run(times: list[float], nlls: list[float]) -> dict:
        pairs = enumerate(zip(times, nlls, strict=True))
        curve = [{"iteration": 10 * i, "train_s": t, "test_nll": v} for i, (t, v) in pairs]
        return {"curve": curve, "final_test_nll": nlls[-1]}

    return {
        name: {
            "entropy": entropy,
            "runs": {
                "reference": run([10.0, 100.0, 300.0], [entropy + 1.0, entropy + 0.3, entropy + 0.1]),
                "default: 2x64 exact rk4-h0.5 RNODE-0.01 step-check T<=2": run(
                    [0.5, 1.0, 5.0, 300.0], [entropy + 1.2, entropy + 0.5, entropy + 0.08, entropy + 0.01]
                ),
            },
        }
        for name, entropy in (("8gaussians", 2.83), ("checkerboard", 3.47))
    }


def test_one_panel_per_dataset_in_a_png(tmp_path: Path) -> None:
    png = curves_png(_results())
    path = tmp_path / "curves.png"
    path.write_bytes(png)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[1] > 1.8 * image.shape[0]  # two panels side by side
    one = curves_png({"8gaussians": _results()["8gaussians"]})
    assert np.asarray(Image.open(io.BytesIO(one))).shape[1] < image.shape[1]
    assert (image < 80).all(axis=2).sum() > 500  # the black reference curve and its markers are drawn


def test_main_reads_the_results_json_and_writes_the_picture(tmp_path: Path) -> None:
    source, target = tmp_path / "bench_train.json", tmp_path / "img" / "bench_train.png"
    source.write_text(json.dumps({"benchmark": "bench_train", "results": _results()}))
    main([str(source), str(target)])
    assert target.read_bytes() == curves_png(_results())


def test_legend_labels_name_the_default_recipe_once() -> None:
    recipe = " exact rk4-h0.5 RNODE-0.01 step-check T<=2 b256 lr3e-3"
    assert short_label("default: 2x64" + recipe) == "default: 2x64"
    assert short_label("3x128" + recipe) == "3x128, default recipe"
    assert short_label("2x64 exact rk4-h0.5 RNODE-0.01 step-check T<=1.5 b256 lr3e-3") == "T<=1.5 b256 lr3e-3"
    assert short_label("reference") == "reference"

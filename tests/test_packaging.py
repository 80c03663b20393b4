"""Packaging: the package installs beside any torch build; only the Makefile pins this machine's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(line).name: Requirement(line) for line in project["dependencies"]}


def test_pyproject_accepts_other_torch_builds() -> None:
    torch = _requirements()["torch"]
    operators = {spec.operator for spec in torch.specifier}
    assert operators and operators <= {">=", ">", "<", "<=", "!="}, torch
    # A CUDA build such as 2.13.0+cu128 and an older supported release both satisfy it.
    assert torch.specifier.contains("2.13.0+cu128")
    assert torch.specifier.contains("2.5.1")


def test_makefile_installs_the_exact_pin_before_the_project() -> None:
    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r"^TORCH_PIN \?= (torch==[\d.]+)$", makefile, flags=re.MULTILINE)
    assert pin is not None, "Makefile must pin this machine's torch wheel in TORCH_PIN"
    recipe = makefile[makefile.index("$(STAMP):") :]
    assert recipe.index("'$(TORCH_PIN)'") < recipe.index("-e '.[dev]'")

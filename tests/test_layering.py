"""The service's packages import only the layers beneath them (see ``service/__init__.py``).

Every ``import service.X`` / ``from service.X import`` in a package's modules is read with ``ast``
(imports inside functions count too) and checked against the allowed table below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALLOWED: dict[str, set[str]] = {
    "ml": set(),
    "config": set(),
    "storage": {"ml"},
    "db": {"config", "ml"},
    "jobs": {"config", "db", "ml"},
    "plots": {"ml", "jobs"},
    "schemas": {"db", "jobs", "ml"},
    "serving": {"ml", "plots", "schemas", "storage"},
    "api": {"config", "db", "jobs", "ml", "plots", "schemas", "serving", "storage"},
    "cli": {"api", "config", "db", "jobs", "ml", "plots", "schemas", "serving", "storage"},
}


def service_imports(path: Path) -> set[str]:
    """The top-level service packages a module imports (``service.db.models`` -> ``db``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "service":
                names = [f"service.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "service" and len(parts) > 1:
                found.add(parts[1])
    return found


def package_files(package: str) -> list[Path]:
    single = ROOT / "service" / f"{package}.py"
    return [single] if single.exists() else sorted((ROOT / "service" / package).rglob("*.py"))


def test_every_service_package_is_in_the_table() -> None:
    on_disk = {p.name for p in (ROOT / "service").iterdir() if (p / "__init__.py").exists()}
    on_disk |= {p.stem for p in (ROOT / "service").glob("*.py") if p.stem != "__init__"}
    assert on_disk == set(ALLOWED), "add the new package to ALLOWED and to service/__init__.py"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_its_lower_layers(package: str) -> None:
    files = package_files(package)
    assert files, f"service.{package} has no modules"
    for path in files:
        extra = service_imports(path) - ALLOWED[package] - {package}
        assert not extra, f"{path.relative_to(ROOT)} imports service.{sorted(extra)}"


def test_the_checker_sees_function_level_and_from_service_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from service.db import models\nfrom service import serving\n")
    assert service_imports(module) == {"db", "serving"}

"""Regenerate ``openapi/openapi.json`` from ``create_app()``: ``python openapi/generate.py``.

``--check`` exits 1 when the file differs from what the app serves (``tests/service`` runs the same
comparison).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "openapi" / "openapi.json"

__all__ = ["TARGET", "current_schema", "render"]


def current_schema() -> dict[str, Any]:
    """The schema the app serves at ``/openapi.json`` (no database or broker is contacted)."""
    sys.path.insert(0, str(ROOT))
    from service.api.main import create_app
    from service.config import Settings

    return create_app(Settings(database_url="sqlite://", models_store=ROOT / "models_store")).openapi()


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="Fail if the file is out of date.")
    args = parser.parse_args()
    text = render(current_schema())
    if args.check:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python openapi/generate.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

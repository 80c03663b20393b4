"""Time-series files for the CLI: long-format CSV (``series_id,time,value_1,...``) or JSON.

JSON is either a list of ``{"times", "values"}`` or ``{"series": [...]}`` (the ``POST /datasets``
body); ``null`` / an empty cell marks a missing value. Any other CSV is a point set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.ml.errors import DataError
from service.ml.series import Series
from service.ml.series_io import series_from_csv, series_from_json

__all__ = ["is_series_csv", "read_json", "read_series_file"]

OBSERVED_FRACTION = 0.5  # as the service does for uploads: first half encodes, second half extrapolates


def is_series_csv(content: bytes) -> bool:
    """Whether the first line of a CSV is a long-format header ``series_id,time,...``."""
    first = content.lstrip(b"\xef\xbb\xbf \t\r\n").split(b"\n", 1)[0]
    return first.split(b",", 1)[0].strip().lower() == b"series_id"


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``; a syntax error becomes a one-line DataError naming the line."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            fix="check the file with a JSON validator",
            field=str(path),
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text", fix="save the file as UTF-8", field=str(path)) from None


def read_series_file(path: Path, observed_fraction: float = OBSERVED_FRACTION) -> list[Series] | None:
    """The series in ``path`` (a ``.json`` file or a long-format CSV), or None for a point CSV."""
    if path.suffix.lower() == ".json":
        raw = read_json(path)
        items = raw.get("series") if isinstance(raw, dict) else raw
        return series_from_json(items, observed_fraction=observed_fraction)
    content = path.read_bytes()
    if is_series_csv(content):
        return series_from_csv(content, observed_fraction=observed_fraction)
    return None

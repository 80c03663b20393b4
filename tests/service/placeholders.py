"""Request tables written before a run exists: ``RUN`` stands for its id until ``fill`` puts it in."""

from __future__ import annotations

from typing import Any

RUN = "{run}"  # replaced by the trained run's id


def fill(value: Any, run_id: str) -> Any:
    """``value`` with every ``RUN`` in its strings, bytes, dict values and list items replaced."""
    if isinstance(value, str):
        return value.replace(RUN, run_id)
    if isinstance(value, bytes):
        return value.replace(RUN.encode(), run_id.encode())
    if isinstance(value, dict):
        return {k: fill(v, run_id) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, run_id) for v in value]
    return value

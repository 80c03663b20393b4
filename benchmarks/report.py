"""Shared parts of the benchmarks: the machine description and the JSON + markdown writers."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["RESULTS", "machine", "median_time", "write_results"]

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU model, visible cores, torch threads and versions: stated beside every result."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "note": "Shared CPU: compare ratios measured side by side in one run, not absolute times",
    }


def median_time(fn: Callable[[], object], repeats: int, inner: int = 1) -> float:
    """Median over ``repeats`` of the mean wall time (s) of ``inner`` back-to-back calls."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str,
    title: str,
    payload: dict[str, Any],
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` (payload + machine) and ``results/<name>.md`` (a table)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine()
    payload = {"benchmark": name, "machine": info, **payload}
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    header = (
        f"# {title}\n\nMachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
        f"with {info['torch_threads']} thread(s). {info['note']}.\n"
    )
    body = "\n".join(f"- {n}" for n in notes)
    md_path.write_text(f"{header}\n{_markdown_table(headers, rows)}\n\n{body}\n")
    return json_path, md_path

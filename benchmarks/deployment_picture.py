"""Draw the scaled-out deployment (docs/img/deployment.png) from the process list below.

``python -m benchmarks.deployment_picture [--out docs/img/deployment.png]``. The boxes are the
processes ``docker-compose.yml`` runs with replicas; the arrows are who talks to whom.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = {  # name: (x, y, width, height, label, colour)
    "clients": (0.2, 3.0, 1.6, 1.0, "clients\ncurl, /ui, SDKs", "#eeeeee"),
    "api1": (2.6, 4.2, 2.0, 1.0, "API replica 1\nFastAPI + uvicorn", "#cfe2ff"),
    "api2": (2.6, 1.8, 2.0, 1.0, "API replica 2\nFastAPI + uvicorn", "#cfe2ff"),
    "pg": (5.6, 5.0, 2.2, 0.9, "PostgreSQL\nruns, metrics, sweeps", "#d1e7dd"),
    "redis": (5.6, 3.05, 2.2, 0.9, "Redis\ntraining queues", "#f8d7da"),
    "s3": (5.6, 1.1, 2.2, 0.9, "S3 / MinIO\ncheckpoints, uploads, plots", "#fff3cd"),
    "gpu": (8.8, 4.2, 2.3, 1.0, "GPU worker\ntraining-gpu, training", "#e2d9f3"),
    "cpu": (8.8, 1.8, 2.3, 1.0, "CPU worker\ntraining", "#e2d9f3"),
}
LINKS = [  # (from, to, label)
    ("clients", "api1", "HTTP"),
    ("clients", "api2", ""),
    *[(api, store, "") for api in ("api1", "api2") for store in ("pg", "redis", "s3")],
    *[(worker, store, "") for worker in ("gpu", "cpu") for store in ("pg", "redis", "s3")],
]


def _anchor(name: str, towards: str) -> tuple[float, float]:
    x, y, w, h, *_ = BOXES[name]
    tx = BOXES[towards][0]
    side = x + w if tx > x else x
    return side, y + h / 2


def draw(out: Path) -> None:
    fig = Figure(figsize=(11.5, 6.4), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 11.4)
    ax.set_ylim(0, 6.6)
    ax.axis("off")
    for x, y, w, h, label, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#444444", lw=1.2))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=10)
    for start, end, label in LINKS:
        a, b = _anchor(start, end), _anchor(end, start)
        arrow = FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, lw=1.0, color="#555555")
        ax.add_patch(arrow)
        if label:
            ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.15, label, ha="center", fontsize=9)
    notes = (
        "Every process keeps its own cache directory (ODESERVE_STORE_CACHE_DIR): nothing is shared on disk.\n"
        "The database is the source of truth; messages carry run ids; a run's checkpoint is published\n"
        "to S3 before its digest is committed, so any worker can resume it and any API can serve it."
    )
    ax.text(0.2, 0.15, notes, fontsize=9, va="bottom", color="#333333")
    ax.text(
        0.2,
        6.3,
        "odeserve on several machines: two APIs, two workers, shared backends",
        fontsize=13,
        weight="bold",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/deployment.png"))
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()

"""What a tolerance buys: 1-D FFJORD on the four Beta mixtures at atol 1e-1, 1e-4 and 1e-9.

Model: a 1-D CNF (FFJORD, arXiv:1810.01367, exact trace) whose net sees a sin/cos positional
encoding of t and x, two tanh layers of 64; dopri5 with backprop through the solver. Only ``atol``
varies; ``rtol`` stays at ``RTOL`` = 1e-5. Every run has the same seed, data and iterations.

The table comes from the service itself: the script starts ``odeserve up`` (SQLite, embedded Redis,
one Celery worker, ``benchmarks.serve_stack``), sends ONE ``POST /sweeps`` over ``solver.atol`` x
``dataset.name`` and reads the sweep resource's table when every run has finished. Each row is what
the worker recorded: wall clock, NFE per training iteration (``nfe_*_mean``, the mean over the
run), ``test_nll`` at the run's own solver and ``test_nll_tight``, the same weights re-scored by
dopri5 at rtol = atol = 1e-8 in float64 (``service.ml.rescore``). The worker is told to re-score
all 5,000 test points (``ODESERVE_TIGHT_EVAL_POINTS``; the service default is the first 1,000), so
both NLLs are over the same points and the KL to the true density is ``test_nll_tight - entropy``
(exact entropies of the mixtures, by quadrature). The sweep chart and the beta_4 density pictures
are the service's own (``GET /sweeps/{id}/plot.png``, ``GET /runs/{id}/plots/density.png``).

Ablation at atol 1e-4 (``--ablations concatsquash``): a second sweep over the targets with
concat-squash time conditioning instead of the positional encoding. ``relu`` (ReLU instead of
tanh) is slow: ReLU dynamics are not smooth, so dopri5 at atol 1e-4 takes many more steps (one
target took 406 s against 34 s with tanh).

Run: ``python -m benchmarks.tolerance_study --ablations concatsquash`` (the committed results;
about 15 minutes on 2 busy cores, one torch thread), ``--ablations`` alone for the main sweep only,
or ``--quick`` (10 iterations, a smoke run). Writes ``benchmarks/results/tolerance_study.{json,md}``,
``docs/img/tolerance_study.png`` and ``docs/img/beta4_atol_*.png``.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import RESULTS, machine
from benchmarks.serve_stack import HOST, request_json, running_service
from service.jobs.sweeps import METRIC_COLUMNS, markdown_table
from service.ml.data import DATASETS
from service.storage.models_store import atomic_write

__all__ = ["ATOLS", "BASE", "RTOL", "TARGETS", "main", "run_study"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "img"
TARGETS = ["beta_1", "beta_2", "beta_3", "beta_4"]
ATOLS = [1e-1, 1e-4, 1e-9]
RTOL = 1e-5
ABLATION_ATOL = 1e-4
TEST_POINTS = 5000  # load_dataset's default n_test: the tight re-score covers the whole test set
SWEEP_TIMEOUT_S = 3600
BASE: dict[str, Any] = {
    "model": "ffjord",
    "dataset": {"name": "beta_1"},
    "model_config": {
        "hidden_dims": [64, 64],
        "time_conditioning": "positional",
        "num_frequencies": 4,
        "activation": "tanh",
        "divergence": "exact",
    },
    "solver": {"method": "dopri5", "rtol": RTOL, "atol": ABLATION_ATOL, "max_num_steps": 10_000},
    "training": {"iterations": 400, "batch_size": 256, "lr": 3e-3, "seed": 0},
    "device": "cpu",
}
ABLATIONS = {"concatsquash": {"time_conditioning": "concatsquash"}, "relu": {"activation": "relu"}}
WORKER_ENV = {"ODESERVE_TORCH_THREADS": "1", "ODESERVE_TIGHT_EVAL_POINTS": str(TEST_POINTS)}
COLUMNS = tuple(c for c in METRIC_COLUMNS if c != "kl_to_truth")  # KL is computed here, per target


def _get(port: int, path: str) -> Any:
    status, body = request_json(port, "GET", path)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body}")
    return body


def _png(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}")
    return data


def _sweep(port: int, base: dict[str, Any], grid: dict[str, list[Any]], name: str) -> dict[str, Any]:
    """``POST /sweeps`` and poll ``GET /sweeps/{id}`` until no run is queued or running."""
    status, sweep = request_json(port, "POST", "/sweeps", {"base": base, "grid": grid, "name": name})
    if status != 202:
        raise RuntimeError(f"POST /sweeps answered {status}: {sweep}")
    deadline, reported = time.monotonic() + SWEEP_TIMEOUT_S, -1
    while time.monotonic() < deadline:
        sweep = _get(port, f"/sweeps/{sweep['id']}")
        if sweep["status"] not in ("queued", "running"):
            return sweep
        done = sweep["run_count"] - sweep["counts"]["queued"] - sweep["counts"]["running"]
        if done != reported:
            log.info("sweep %s: %d/%d runs finished", name, done, sweep["run_count"])
            reported = done
        time.sleep(2.0)
    raise TimeoutError(f"sweep {sweep['id']} did not finish within {SWEEP_TIMEOUT_S}s")


def _rows(sweep: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    """The sweep resource's table with the variant and the KL of the tight NLL to the truth."""
    rows = []
    for row, run in zip(sweep["table"], sweep["runs"], strict=True):
        entropy = DATASETS[row["dataset.name"]].entropy
        tight = row.get("test_nll_tight")
        atol = run["solver"]["atol"]  # an ablation sweep does not vary it
        rows.append(
            {"variant": variant, "dataset.name": row["dataset.name"], "solver.atol": atol}
            | {k: row.get(k) for k in COLUMNS}
            | {
                "kl_tight": tight - entropy if tight is not None and entropy is not None else None,
                "status": row["status"],
                "run_id": row["run_id"],
                "test_nll_tight_s": (run.get("metrics") or {}).get("test_nll_tight_s"),
            }
        )
    return rows


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per atol: wall clock summed over the targets, mean NFE per iteration, mean NLL and KL."""
    out = []
    for atol in ATOLS:
        group = [r for r in rows if r["solver.atol"] == atol and r["status"] == "succeeded"]

        def mean(key: str, group: list[dict[str, Any]] = group) -> float | None:
            values = [r[key] for r in group if r.get(key) is not None]
            return sum(values) / len(values) if values else None

        out.append(
            {
                "atol": atol,
                "runs": len(group),
                "wall_clock_s (sum)": sum(r["wall_clock_s"] for r in group),
                "nfe_forward/iter (mean)": mean("nfe_forward_mean"),
                "nfe_backward/iter (mean)": mean("nfe_backward_mean"),
                "test_nll (own solver)": mean("test_nll"),
                "test_nll_tight (1e-8)": mean("test_nll_tight"),
                "kl_to_truth (tight)": mean("kl_tight"),
            }
        )
    return out


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _payload(base: dict[str, Any], rows: list, sweeps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    payload = {
        "benchmark": "tolerance_study",
        "machine": machine(),
        "complete": all(r["status"] == "succeeded" for r in rows),
        "via": "one POST /sweeps per table (odeserve up: SQLite, embedded Redis, one Celery worker)",
        "worker_env": WORKER_ENV,
        "sweeps": {
            label: {"id": s["id"], "grid": s["grid"], "status": s["status"]} for label, s in sweeps.items()
        },
        "base": base,
        "rtol": RTOL,
        "tight_solver": next(iter(_solvers(sweeps)), None),
        "entropy": {name: DATASETS[name].entropy for name in TARGETS},
        "summary": _summary([r for r in rows if r["variant"] == "positional+tanh"]),
        "rows": rows,
    }
    return _finite(payload)


def _solvers(sweeps: dict[str, dict[str, Any]]) -> list[str]:
    return [
        run["metrics"]["test_nll_tight_solver"]
        for sweep in sweeps.values()
        for run in sweep["runs"]
        if (run.get("metrics") or {}).get("test_nll_tight_solver")
    ]


def _write(name: str, payload: dict[str, Any]) -> None:
    atomic_write(RESULTS / f"{name}.json", (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())
    atomic_write(RESULTS / f"{name}.md", _markdown(payload).encode())


def run_study(iterations: int, ablations: list[str], images: bool, name: str) -> dict[str, Any]:
    """One sweep over atol x target (and one per ablation) through the service; writes results."""
    base = copy.deepcopy(BASE)
    base["training"]["iterations"] = iterations
    sweeps: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="tolerance_study-") as data_dir,
        running_service(Path(data_dir), env=WORKER_ENV) as port,
    ):
        # solver.atol first: the sweep chart puts the first grid path on its x axis.
        grid = {"solver.atol": ATOLS, "dataset.name": TARGETS}
        sweeps["positional+tanh"] = main = _sweep(port, base, grid, "tolerance study")
        rows = _rows(main, "positional+tanh")
        _write(name, _payload(base, rows, sweeps))
        if images:
            atomic_write(IMAGES / "tolerance_study.png", _png(port, f"/sweeps/{main['id']}/plot.png"))
            for row in rows:
                if row["dataset.name"] == "beta_4" and row["status"] == "succeeded":
                    png = _png(port, f"/runs/{row['run_id']}/plots/density.png")
                    atomic_write(IMAGES / f"beta4_atol_{row['solver.atol']:.0e}.png", png)
        for label in ablations:
            variant = base | {"model_config": base["model_config"] | ABLATIONS[label]}
            variant["solver"] = base["solver"] | {"atol": ABLATION_ATOL}
            sweeps[label] = _sweep(port, variant, {"dataset.name": TARGETS}, f"ablation {label}")
            rows += _rows(sweeps[label], label)
            _write(name, _payload(base, rows, sweeps))
    return _payload(base, rows, sweeps)


def _table(rows: list[dict[str, Any]]) -> str:
    hidden = ("run_id", "test_nll_tight_s")  # kept in the JSON
    return markdown_table([{k: v for k, v in r.items() if k not in hidden} for r in rows])


def _markdown(payload: dict[str, Any]) -> str:
    info, base = payload["machine"], payload["base"]
    ablation = [r for r in payload["rows"] if r["variant"] != "positional+tanh"]
    reference = [r for r in payload["rows"] if r["variant"] == "positional+tanh"]
    baseline = [r for r in reference if r["solver.atol"] == ABLATION_ATOL]
    main = payload["sweeps"]["positional+tanh"]
    parts = [
        "# What a tolerance buys: 1-D FFJORD on four Beta mixtures",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, worker with "
        f"1 torch thread. {info['note']}.",
        f"Model: FFJORD 1-D, positional encoding of t and x, tanh, hidden "
        f"{base['model_config']['hidden_dims']}, exact trace; dopri5, rtol = {RTOL} fixed, atol varied; "
        f"{base['training']['iterations']} iterations, batch {base['training']['batch_size']}, "
        f"lr {base['training']['lr']}, seed {base['training']['seed']}.",
        f"Every number is the service's: one `POST /sweeps` with grid `{json.dumps(main['grid'])}` "
        "(`odeserve up`, one worker), read from the sweep resource's table. NFE are per training "
        "iteration, the mean over the run (`nfe_*_mean`). `test_nll` is scored at the run's own "
        "solver over the whole test set; `test_nll_tight` re-scores the same weights with "
        f"{payload['tight_solver']} (the whole test set too); `test_nll_tight_gap` is "
        "tight minus own (positive: the own tolerance flattered the model); "
        "`kl_tight` = tight NLL - exact entropy.",
        "## Per atol (four targets)",
        markdown_table(payload["summary"]),
        "## Every run",
        _table(reference),
    ]
    if ablation:
        parts += ["## Ablations at atol 1e-4 (a second sweep)", _table(baseline + ablation)]
    if not payload["complete"]:
        parts.insert(1, "**Partial results: not every run succeeded.**")
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=BASE["training"]["iterations"])
    parser.add_argument("--quick", action="store_true", help="10 iterations, no ablations or images")
    parser.add_argument(
        "--ablations", nargs="*", choices=list(ABLATIONS), default=["concatsquash"], help="none: main grid"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    iterations = 10 if args.quick else args.iterations
    name = "tolerance_study_quick" if args.quick else "tolerance_study"
    ablations = [] if args.quick else args.ablations
    payload = run_study(iterations, ablations=ablations, images=not args.quick, name=name)
    print(markdown_table(payload["summary"]))


if __name__ == "__main__":
    main()

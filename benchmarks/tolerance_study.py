"""What a tolerance buys: 1-D FFJORD on the four Beta mixtures at atol 1e-1, 1e-4 and 1e-9.

Model: a 1-D CNF (FFJORD, arXiv:1810.01367, exact trace) whose net sees a sin/cos positional
encoding of t and x, two tanh layers of 64; dopri5 with backprop through the solver. Only ``atol``
varies; ``rtol`` stays at ``RTOL`` = 1e-5. Ablations at atol 1e-4: concat-squash time conditioning
(no positional encoding) and ReLU instead of tanh. Every run has the same seed, data and iterations.

Each trained model is scored twice on the same 5,000 held-out points: ``test_nll`` with its own
(training) solver, which is what a service reports at that tolerance, and ``test_nll_ref`` with a
tight reference solver (rtol = atol = 1e-8), which is the model's actual likelihood. The KL to the
true density is ``test_nll_ref - entropy`` (exact entropies of the mixtures, by quadrature).

Run: ``python -m benchmarks.tolerance_study --ablations concatsquash`` (about 20 minutes on 2 busy
cores, one torch thread; the committed results), ``--ablations`` alone for the main grid only, or
``--quick`` (a smoke run). The ReLU ablation (default ``--ablations concatsquash relu``) is slow:
ReLU dynamics are not smooth, so dopri5 at atol 1e-4 takes many more steps (one target took 406 s
against 34 s with tanh; the next ran over 17 minutes before it was stopped). Writes
``benchmarks/results/tolerance_study.{json,md}``, ``docs/img/tolerance_study.png`` and
``docs/img/beta4_atol_*.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import RESULTS, machine
from service.jobs.sweeps import comparison_rows, expand_grid, markdown_table
from service.ml.data import DATASETS, load_dataset
from service.ml.errors import OdeServeError
from service.ml.ode import SolverConfig
from service.ml.training import TrainConfig, fit, init_model
from service.plots import density_png, sweep_png
from service.storage.models_store import atomic_write

__all__ = ["ATOLS", "BASE", "RTOL", "TARGETS", "main", "run_study"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "img"
TARGETS = ["beta_1", "beta_2", "beta_3", "beta_4"]
ATOLS = [1e-1, 1e-4, 1e-9]
RTOL = 1e-5
ABLATION_ATOL = 1e-4
REFERENCE_SOLVER = SolverConfig(rtol=1e-8, atol=1e-8, max_num_steps=100_000)
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
}
ABLATIONS = {"concatsquash": {"time_conditioning": "concatsquash"}, "relu": {"activation": "relu"}}


def _train(request: dict[str, Any], cache: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Train one request; returns its run dict (status, metrics) and the trained model or None."""
    name = request["dataset"]["name"]
    config = TrainConfig.model_validate(request["training"])
    data = cache.setdefault(name, load_dataset(name, seed=config.seed))
    solver = SolverConfig.model_validate(request["solver"])
    model = init_model(request["model"], request["model_config"], data.dim, solver, config.seed)
    try:
        result = fit(model, data, config)
    except OdeServeError as exc:
        return {"status": "failed", "metrics": {}, "error": str(exc)}, None
    nfe_f = [h["nfe_forward"] for h in result.history]
    nfe_b = [h["nfe_backward"] for h in result.history]
    model.solver = REFERENCE_SOLVER  # re-score the same weights with a tight solver
    started = time.perf_counter()
    with torch.no_grad():
        ref_nll = float(-model.log_prob(data.test).double().mean())
    entropy = DATASETS[name].entropy
    metrics = {
        **result.metrics,
        "train_loss": result.final_loss,
        "wall_clock_s": result.wall_s,
        "nfe_forward": sum(nfe_f) / len(nfe_f),
        "nfe_backward": sum(nfe_b) / len(nfe_b),
        "nfe_forward_last": result.nfe_forward,
        "test_nll_ref": ref_nll,
        "kl_ref": ref_nll - entropy if entropy is not None else None,
        "ref_eval_s": time.perf_counter() - started,
    }
    model.solver = solver
    return {"status": "succeeded", "metrics": metrics}, (model, data)


def _row(run: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    row = comparison_rows([run], keys)[0]
    row.pop("status")
    metrics = run["metrics"]
    return row | {k: metrics.get(k) for k in ("test_nll_ref", "kl_ref")} | {"status": run["status"]}


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
                "nfe_forward/iter": mean("nfe_forward"),
                "nfe_backward/iter": mean("nfe_backward"),
                "test_nll (train solver)": mean("test_nll"),
                "test_nll (ref solver)": mean("test_nll_ref"),
                "kl_to_truth (ref)": mean("kl_ref"),
            }
        )
    return out


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _payload(base: dict[str, Any], rows: list, runs: list, total: int) -> dict[str, Any]:
    payload = {
        "benchmark": "tolerance_study",
        "machine": machine(),
        "complete": len(runs) == total,
        "runs_done": f"{len(runs)}/{total}",
        "base": base,
        "rtol": RTOL,
        "reference_solver": REFERENCE_SOLVER.model_dump(),
        "entropy": {name: DATASETS[name].entropy for name in TARGETS},
        "summary": _summary([r for r in rows if r["variant"] == "positional+tanh"]),
        "rows": rows,
        "runs": [{k: v for k, v in run.items() if k != "request"} for run in runs],
    }
    return _finite(payload)


def _write(name: str, payload: dict[str, Any]) -> None:
    atomic_write(RESULTS / f"{name}.json", (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())
    atomic_write(RESULTS / f"{name}.md", _markdown(payload).encode())


def run_study(iterations: int, ablations: list[str], images: bool, name: str) -> dict[str, Any]:
    """Train the grid (and ablations); results are rewritten after every run (``complete`` says
    whether all ran), figures written as their runs finish. Returns the final JSON payload."""
    base = copy.deepcopy(BASE)
    base["training"]["iterations"] = iterations
    grid = {"dataset.name": TARGETS, "solver.atol": ATOLS}
    combos = [(req, values, "positional+tanh") for req, values in expand_grid(base, grid)]
    for label in ablations:
        variant = base | {"model_config": base["model_config"] | ABLATIONS[label]}
        variant["solver"] = base["solver"] | {"atol": ABLATION_ATOL}
        combos += [(r, v, label) for r, v in expand_grid(variant, {"dataset.name": TARGETS})]
    rows_main = range(len(TARGETS) * len(ATOLS))  # the positional+tanh grid comes first
    cache: dict[str, Any] = {}
    runs, rows = [], []
    for index, (request, values, variant) in enumerate(combos):
        started = time.perf_counter()
        run, trained = _train(request, cache)
        values = {"variant": variant, "dataset.name": request["dataset"]["name"]}
        values["solver.atol"] = request["solver"]["atol"]
        run |= {"grid": values, "request": request}
        runs.append(run)
        rows.append(_row(run, list(values)))
        elapsed = time.perf_counter() - started
        log.info("[%d/%d] %s: %s in %.0fs", index + 1, len(combos), values, run["status"], elapsed)
        if images and trained is not None and values["dataset.name"] == "beta_4" and index < len(rows_main):
            model, data = trained
            png = density_png(model, data.test, data.true_log_prob)
            atomic_write(IMAGES / f"beta4_atol_{values['solver.atol']:.0e}.png", png)
        _write(name, _payload(base, rows, runs, len(combos)))
    if images:
        main_rows = [
            {k: v for k, v in r.items() if k != "variant"} for r in rows if r["variant"] == "positional+tanh"
        ]
        atomic_write(IMAGES / "tolerance_study.png", sweep_png(main_rows, "solver.atol", ["dataset.name"]))
    return _payload(base, rows, runs, len(combos))


def _markdown(payload: dict[str, Any]) -> str:
    info, base = payload["machine"], payload["base"]
    ablation = [r for r in payload["rows"] if r["variant"] != "positional+tanh"]
    reference = [r for r in payload["rows"] if r["variant"] == "positional+tanh"]
    baseline = [r for r in reference if r["solver.atol"] == ABLATION_ATOL]
    parts = [
        "# What a tolerance buys: 1-D FFJORD on four Beta mixtures",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with "
        f"{info['torch_threads']} thread(s). {info['note']}.",
        f"Model: FFJORD 1-D, positional encoding of t and x, tanh, hidden "
        f"{base['model_config']['hidden_dims']}, exact trace; dopri5, rtol = {RTOL} fixed, atol varied; "
        f"{base['training']['iterations']} iterations, batch {base['training']['batch_size']}, "
        f"lr {base['training']['lr']}, seed {base['training']['seed']}. NFE are per training iteration "
        "(mean over the run). `test_nll (train solver)` uses the run's own tolerances; `ref` re-scores "
        "the same weights with rtol = atol = 1e-8; KL = ref NLL - exact entropy.",
        "## Per atol (four targets)",
        markdown_table(payload["summary"]),
        "## Every run",
        markdown_table(reference),
    ]
    if ablation:
        parts += ["## Ablations at atol 1e-4", markdown_table(baseline + ablation)]
    if not payload["complete"]:
        parts.insert(1, f"**Partial results: {payload['runs_done']} runs finished.**")
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=BASE["training"]["iterations"])
    parser.add_argument("--quick", action="store_true", help="10 iterations, no ablations or images")
    parser.add_argument(
        "--ablations", nargs="*", choices=list(ABLATIONS), default=list(ABLATIONS), help="none: main grid"
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

"""Training cost to a given quality: the FFJORD paper's toy preset vs our candidate presets.

The reference is FFJORD's toy-2D setup (arXiv:1810.01367): hidden 64,64,64 concat-squash tanh,
Hutchinson trace, dopri5 at rtol=atol=1e-5 with adjoint gradients, batch 100, Adam lr 1e-3,
learnable T starting at 0.5. It trains for R iterations; its test NLL then is the target. Each
candidate trains, with the same seed and data, for the reference's training wall time. Reported:
wall time and NFE per iteration, test NLL against training time (evaluation time excluded; every
model is evaluated with the same solver, exact trace and dopri5 at 1e-5, on the same test points),
and the headlines: time to reach the reference's NLL / reference time, KL (test NLL - entropy) at
the reference's wall time, and the NFE-per-iteration ratio.

Run: ``python -m benchmarks.bench_train [--quick] [--datasets 8gaussians checkerboard]``
(full: R=1500, about 9 minutes for the reference alone and the same again per candidate, each
dataset in its own process side by side; quick: R=150). A full run also draws the curves into
``docs/img/bench_train.png`` (``benchmarks.train_curves``).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import torch

from benchmarks.report import write_results
from benchmarks.train_curves import write_curves
from benchmarks.train_scores import Run, headline, stored_reference
from service.ml.errors import TrainingCanceled
from service.ml.models.ffjord import FFJORD, FLOW_MATCHING_LR
from service.ml.ode import SolverConfig
from service.ml.training import ProgressEvent, TrainConfig, TrainState, fit, init_model

EVAL_SOLVER = SolverConfig(rtol=1e-5, atol=1e-5, max_num_steps=10_000)
EMA_EVAL_EVERY = 10


@dataclass(frozen=True)
class Preset:
    """One training recipe: model config, solver (None: the default SolverConfig) and optimiser settings."""

    model: dict[str, Any]
    solver: SolverConfig | None
    batch_size: int
    lr: float
    training: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields (objective...)


_TRAIN_DEFAULTS = TrainConfig()
DEFAULT = "default: 2x64 exact rk4-h0.5 RNODE-0.01 step-check T<=2 b256 lr3e-3"
CAP15 = "2x64 exact rk4-h0.5 RNODE-0.01 step-check T<=1.5 b256 lr3e-3"
DOPRI5 = "2x64 exact dopri5-1e-3 b256 lr3e-3 (the first default)"
FIXED_T1 = "2x64 exact rk4-h0.5 RNODE-0.01 step-check T=1 fixed b256 lr3e-3"
FIXED_T05 = "2x64 exact rk4-h0.5 RNODE-0.01 step-check T=0.5 fixed b256 lr3e-3"
UNCAPPED = "2x64 exact rk4-h0.5 RNODE-0.01 step-check T unbounded b256 lr3e-3"
WIDE = "3x128 exact rk4-h0.5 RNODE-0.01 step-check T<=2 b256 lr3e-3"
FM = "flow matching: 2x64, OT coupling, EMA 0.999, b256 lr1e-2 (objective defaults)"
FM_INDEPENDENT = "flow matching: 2x64, independent coupling, EMA 0.999, b256 lr1e-2"
FM_LR = "flow matching: 2x64, OT coupling, EMA 0.999, b256 lr3e-3 (the likelihood lr)"
_RNODE_OFF = {"kinetic_weight": 0.0, "jacobian_weight": 0.0}
PRESETS: dict[str, Preset] = {
    "reference": Preset(
        {"hidden_dims": (64, 64, 64), "divergence": "hutchinson", **_RNODE_OFF},
        SolverConfig(rtol=1e-5, atol=1e-5, adjoint=True),
        100,
        1e-3,
    ),
    # Exactly what POST /train gives with no model_config, solver or training settings.
    DEFAULT: Preset({}, None, _TRAIN_DEFAULTS.batch_size, FFJORD.training_defaults("likelihood")["lr"]),
    DOPRI5: Preset(_RNODE_OFF, SolverConfig(rtol=1e-3, atol=1e-3), 256, 3e-3),
    # RNODE fixes T = 1 (Finlay et al. 2020): fewer steps per solve than a learned T.
    FIXED_T1: Preset({"integration_time": 1.0, "learn_integration_time": False}, None, 256, 3e-3),
    FIXED_T05: Preset({"integration_time": 0.5, "learn_integration_time": False}, None, 256, 3e-3),
    # A learnt T that may grow without bound (each 0.5 it gains adds an rk4 step per solve).
    UNCAPPED: Preset({"max_integration_time": None}, None, 256, 3e-3),
    # The default recipe on a larger net (bench_kl_floor: more capacity for checkerboard's edges).
    WIDE: Preset({"hidden_dims": (128, 128, 128)}, None, 256, 3e-3),
    # Three rk4 steps at most instead of four.
    CAP15: Preset({"max_integration_time": 1.5}, None, 256, 3e-3),
    # training.objective = "flow_matching" and nothing else: one net evaluation per step, no solve.
    FM: Preset({}, None, 256, FLOW_MATCHING_LR, {"objective": "flow_matching"}),
    FM_INDEPENDENT: Preset(
        {}, None, 256, FLOW_MATCHING_LR, {"objective": "flow_matching", "coupling": "independent"}
    ),
    # The likelihood objective's learning rate (flow matching's default before bench_train_fm).
    FM_LR: Preset({}, None, 256, 3e-3, {"objective": "flow_matching"}),
    "2x64 exact rk4-h0.5 RNODE-0.01 no-step-check b256 lr3e-3": Preset(
        {"step_check_interval": 0}, SolverConfig(method="rk4", step_size=0.5), 256, 3e-3
    ),
    "2x64 exact dopri5-1e-3 RNODE-0.01 b256 lr5e-3": Preset(
        {}, SolverConfig(rtol=1e-3, atol=1e-3), 256, 5e-3
    ),
}
FULL_PRESETS = ["reference", DEFAULT, WIDE, FM, FM_LR]
QUICK_PRESETS = FULL_PRESETS


def eval_times(budget_s: float) -> list[float]:
    """Training times at which candidates are evaluated: every 0.5 s for the first 30 s (where the
    time-to-reference-NLL headline is decided), every 2 s to 60 s, then 15 more up to the budget."""
    dense = [t / 2 for t in range(1, 61)] + [float(t) for t in range(32, 61, 2)]
    sparse = [60.0 + (budget_s - 60.0) * k / 15 for k in range(1, 16)] if budget_s > 60 else []
    return [t for t in dense if t < budget_s] + sparse


def _evaluate(model: Any, test: torch.Tensor) -> float:
    solver, model.solver = model.solver, EVAL_SOLVER
    model.eval()
    try:
        with torch.no_grad():
            return float(-model.log_prob(test).mean())
    finally:
        model.solver = solver
        model.train()


def train(
    name: str,
    data: Any,
    test: torch.Tensor,
    *,
    max_iterations: int | None,
    max_train_s: float | None,
    eval_at_s: list[float] | None = None,
    eval_every_iters: int | None = None,
    seed: int,
) -> Run:
    """Train preset ``name`` until ``max_iterations`` or ``max_train_s`` of training time.

    Test NLL is evaluated once training time passes each of ``eval_at_s``, every ``eval_every_iters``
    iterations, and at the end.
    """
    preset = PRESETS[name]
    model = init_model("ffjord", preset.model, data.train.shape[1], preset.solver, seed)
    config = TrainConfig(
        iterations=200_000, batch_size=preset.batch_size, lr=preset.lr, seed=seed, **preset.training
    )
    run, eval_total, pending = Run(name), 0.0, sorted(eval_at_s or [])
    # With a weight average the served weights are the average: fit puts it into the model only
    # around checkpoints, so such runs evaluate in the checkpoint callback (every EMA_EVAL_EVERY
    # steps; a due evaluation waits for the next one and the run ends after its last).
    averaged = config.resolved_ema_decay > 0
    due, finished = False, False

    def evaluate() -> None:
        nonlocal eval_total
        start = time.perf_counter()
        nll = _evaluate(model, test)
        eval_total += time.perf_counter() - start
        run.curve.append({"iteration": run.iterations, "train_s": run.train_s, "test_nll": nll})
        print(f"  {name}: it {run.iterations} t {run.train_s:.1f}s nll {nll:.4f}", flush=True)

    def on_checkpoint(_: TrainState) -> None:
        nonlocal due, finished
        if due:
            evaluate()
            due, finished = False, budget_spent()

    def budget_spent() -> bool:
        return (max_iterations is not None and run.iterations >= max_iterations) or (
            max_train_s is not None and run.train_s >= max_train_s
        )

    def on_progress(event: ProgressEvent) -> None:
        nonlocal due
        run.iterations = event.iteration
        run.train_s = event.wall_s - eval_total
        run.nfe_forward += event.nfe_forward
        run.nfe_backward += event.nfe_backward
        done = budget_spent()
        due_iter = eval_every_iters is not None and run.iterations % eval_every_iters == 0
        due_time = bool(pending) and run.train_s >= pending[0]
        while pending and run.train_s >= pending[0]:
            pending.pop(0)
        if due_time or due_iter or done:
            if averaged:
                due = True
            else:
                evaluate()

    def should_stop() -> bool:
        return finished if averaged else budget_spent()

    with contextlib.suppress(TrainingCanceled):  # how should_stop ends a run
        fit(
            model,
            data,
            config,
            on_progress=on_progress,
            should_stop=should_stop,
            checkpoint_every=EMA_EVAL_EVERY if averaged else 0,
            on_checkpoint=on_checkpoint if averaged else None,
        )
    return run


def bench_dataset(
    dataset: str,
    names: list[str],
    r_iters: int,
    eval_points: int,
    seed: int,
    threads: int,
    budget: float | None = None,
) -> tuple[dict[str, Any], list[list[Any]]]:
    """Reference then each candidate on one dataset; returns its results entry and table rows.

    With ``budget`` the reference is not rerun: its recorded run (``stored_reference``) sets the
    target, and candidates train for ``budget`` seconds (at most the reference's time)."""
    torch.set_num_threads(threads)
    from service.ml.data import load_dataset

    data = load_dataset(dataset, seed=seed)
    test = data.test[:eval_points]
    entropy = float(data.entropy) if getattr(data, "entropy", None) is not None else float("nan")
    if budget is not None:
        reference = stored_reference(dataset)
    else:
        print(f"{dataset}: reference for {r_iters} iterations", flush=True)
        reference = train(
            "reference",
            data,
            test,
            max_iterations=r_iters,
            max_train_s=None,
            eval_every_iters=max(1, r_iters // 10),
            seed=seed,
        )
    runs = {"reference": reference}
    seconds = reference.train_s if budget is None else min(budget, reference.train_s)
    for name in names[1:]:
        print(f"{dataset}: {name} for {seconds:.0f}s", flush=True)
        runs[name] = train(
            name,
            data,
            test,
            max_iterations=None,
            max_train_s=seconds,
            eval_at_s=eval_times(seconds),
            seed=seed,
        )
    entry: dict[str, Any] = {"entropy": entropy, "reference_iterations": r_iters, "runs": {}}
    rows = []
    for name, run in runs.items():
        summary = run.summary()
        if name != "reference":
            summary["headline"] = headline(run, reference, entropy)
        entry["runs"][name] = summary
        h = summary.get("headline", {})
        ratio = h.get("time_to_target_ratio")
        rows.append(
            [
                dataset,
                name,
                run.iterations,
                f"{summary['s_per_iter'] * 1e3:.1f}",
                f"{summary['nfe_forward_per_iter']:.1f}",
                f"{summary['nfe_backward_per_iter']:.1f}",
                f"{summary['final_test_nll']:.4f}",
                f"{summary['final_test_nll'] - entropy:.4f}",
                "-" if name == "reference" else ("not reached" if ratio is None else f"{ratio:.4f}"),
                "-" if name == "reference" else f"{h['nfe_per_iter_ratio']:.2f}",
            ]
        )
    return entry, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="R=150")
    parser.add_argument("--datasets", nargs="+", default=["8gaussians", "checkerboard"])
    parser.add_argument("--presets", nargs="+", default=None, help=f"subset of {list(PRESETS)}")
    parser.add_argument("--reference-iterations", type=int, default=None, help="R (default 1500; quick 150)")
    parser.add_argument("--eval-points", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per dataset process")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="train candidates this many seconds against the recorded reference (results/bench_train.json)",
    )
    parser.add_argument(
        "--name", default="bench_train", help="results file stem (the picture: only the default)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    r_iters = args.reference_iterations or (150 if args.quick else 1500)
    names = args.presets or (QUICK_PRESETS if args.quick else FULL_PRESETS)
    names = ["reference"] + [n for n in names if n != "reference"]
    # One process per dataset, side by side: each compares its presets under the same load.
    jobs = [
        (d, names, r_iters, args.eval_points, args.seed, args.threads, args.budget) for d in args.datasets
    ]
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
        outcomes = list(pool.map(bench_dataset, *zip(*jobs, strict=True)))
    results = {d: entry for d, (entry, _) in zip(args.datasets, outcomes, strict=True)}
    rows = [row for _, dataset_rows in outcomes for row in dataset_rows]
    headers = [
        "dataset",
        "preset",
        "iterations",
        "ms/iter",
        "NFE fwd/iter",
        "NFE bwd/iter",
        "test NLL at ref. time",
        "KL",
        "time to ref. NLL / ref. time",
        "NFE/iter ratio",
    ]
    notes = [
        (
            f"Reference trains R={r_iters} iterations; candidates train for the reference's wall time."
            if args.budget is None
            else "Reference: the recorded run of results/bench_train.json (not rerun); candidates train "
            f"{args.budget:g} s (at most the reference's time); 'KL' is at the end of that budget."
        ),
        "Test NLL on the first "
        f"{args.eval_points} test points, exact trace, dopri5 rtol=atol=1e-5 for every model; "
        "evaluation time excluded from training time.",
        "NFE bwd: adjoint = evaluations of the augmented backward ODE; backprop = forward NFE "
        "differentiated once (NfeCounter convention); NFE fwd includes the step check's dopri5 "
        "solves (every 100 iterations). Hutchinson (reference) vs exact trace (ours): "
        "an exact-trace evaluation costs about D+1 forward passes (D=2).",
        "KL = test NLL - entropy of the true distribution (8gaussians: 2.833, checkerboard: log 32 = 3.466).",
        "Candidates are evaluated every 0.5 s of training for 30 s, every 2 s to 60 s, then 15 times more.",
        f"Same seed for weights, batches and noise; one run each; datasets run side by side in "
        f"{len(jobs)} processes with {args.threads} torch thread(s) each on the shared CPU.",
    ]
    write_results(
        args.name,
        "Training: reference FFJORD toy preset vs candidate presets",
        {"quick": args.quick, "presets": {n: repr(PRESETS[n]) for n in names}, "results": results},
        headers,
        rows,
        notes,
    )
    if not args.quick and args.name == "bench_train":  # the README's picture shows the full run
        write_curves(results)


if __name__ == "__main__":
    main()

"""Real tables: test NLL (nats per dimension) against training wall time, ours vs zuko's flows.

For each scikit-learn table (``digits`` 64-D, ``wine`` 13-D, ``diabetes`` 11-D; fixed splits from
``service.ml.tabular``) four methods train for the same wall-time budget on one torch thread:

* ``ffjord likelihood``: today's defaults (2x64 exact-trace rk4 at step 0.5, RNODE 0.01, step check);
* ``ffjord flow matching``: the same net with ``training.objective = "flow_matching"`` and
  ``coupling = "independent"``, EMA 0.999; ``... OT``: the same with the default ``coupling = "ot"``;
* ``zuko MAF`` and ``zuko NSF`` (zuko's defaults: 3 transforms, 2x64 hidden), Adam at lr 1e-3, batch 256.

Every method holds out the same validation points (20 % of the training rows, at most 1000), scores
them during training (that time counts against the budget), keeps the best-validated weights and is
reported on the test rows with those weights: tables this small overfit within seconds, and early
stopping on a validation split is what a user would do. Our models are evaluated with the exact
trace and dopri5 at rtol = atol = 1e-5; evaluation time is excluded. Curves: the test NLL of the
best weights so far at 1/16, 1/8, 1/4, 1/2 and all of the budget.

Run: ``python -m benchmarks.bench_tabular [--budget 60] [--datasets wine] [--jobs 2]`` (about
``5 x budget`` per table; tables run in ``--jobs`` processes side by side). The scaling curve (ms
per iteration and per served point against D) is ``python -m benchmarks.bench_scaling``.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch

from benchmarks.report import write_results
from service.ml.data import load_dataset
from service.ml.ode import SolverConfig
from service.ml.training import TrainConfig, TrainState, fit, init_model

EVAL_SOLVER = SolverConfig(rtol=1e-5, atol=1e-5, max_num_steps=20_000)
MARKS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
VAL_FRACTION, MAX_VAL = 0.2, 1000
SEED = 0
OURS: dict[str, dict[str, Any]] = {
    "ffjord likelihood": {"objective": "likelihood", "val_interval": 20},
    "ffjord flow matching": {"objective": "flow_matching", "coupling": "independent", "val_interval": 500},
    "ffjord flow matching OT": {"objective": "flow_matching", "coupling": "ot", "val_interval": 500},
}
ZUKO = ("zuko MAF", "zuko NSF")
METHODS = (*OURS, *ZUKO)
TABLES = ("digits", "wine", "diabetes")


def _split(name: str) -> Any:
    data = load_dataset(name)
    n_val = min(MAX_VAL, round(VAL_FRACTION * data.train.shape[0]))
    return data, n_val


class _Marks:
    """Copies of the best weights so far at each budget mark (wall time of training so far)."""

    def __init__(self, budget: float) -> None:
        self.times = [m * budget for m in MARKS]
        self.kept: list[tuple[float, dict[str, torch.Tensor]]] = []

    def due(self, wall: float) -> bool:
        return len(self.kept) < len(self.times) and wall >= self.times[len(self.kept)]

    def keep(self, wall: float, weights: dict[str, torch.Tensor]) -> None:
        while self.due(wall):
            self.kept.append((wall, {k: v.detach().clone() for k, v in weights.items()}))


def _ours(name: str, method: str, budget: float) -> dict[str, Any]:
    data, n_val = _split(name)
    config = TrainConfig(
        iterations=200_000, max_seconds=budget, val_points=n_val, patience=0, seed=SEED, **OURS[method]
    )
    model = init_model("ffjord", {}, data.dim, None, SEED)
    marks = _Marks(budget)

    def on_checkpoint(state: TrainState) -> None:
        best = (state.early_stopping or {}).get("best_state")
        if best is not None:
            marks.keep(state.wall_s, best)

    result = fit(model, data, config, checkpoint_every=config.val_interval, on_checkpoint=on_checkpoint)
    marks.keep(math.inf, model.state_dict())  # the end: the restored best weights
    model.query_solver = EVAL_SOLVER
    curve = []
    for (wall, weights), mark in zip(marks.kept, MARKS, strict=False):
        model.load_state_dict(weights)
        nll = model.evaluate(data.test, torch.Generator())["test_nll"]
        curve.append(
            {"budget_fraction": mark, "wall_s": min(wall, result.wall_s), "nll_per_dim": nll / data.dim}
        )
    return {
        "iterations": result.iterations,
        "ms_per_iter": 1e3 * result.wall_s / max(1, result.iterations),
        "best_iteration": result.best_iteration,
        "curve": curve,
    }


def _zuko_flow(method: str, dim: int) -> torch.nn.Module:
    import zuko

    return (zuko.flows.MAF if method == "zuko MAF" else zuko.flows.NSF)(dim)


def _zuko(name: str, method: str, budget: float) -> dict[str, Any]:
    data, n_val = _split(name)
    split = data.with_validation_points(n_val, SEED)  # the same rows fit() holds out
    torch.manual_seed(SEED)
    flow = _zuko_flow(method, data.dim)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(SEED)
    marks, best, best_state = _Marks(budget), math.inf, copy.deepcopy(flow.state_dict())
    nll: Callable[[torch.Tensor], float] = lambda x: float(-flow().log_prob(x).mean())  # noqa: E731
    iteration, started = 0, time.perf_counter()
    best_iteration = 0
    while True:
        iteration += 1
        loss = -flow().log_prob(split.batch(256, generator)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        wall = time.perf_counter() - started
        if iteration % 50 == 0 or wall >= budget:
            with torch.no_grad():
                score = nll(split.val)
            if math.isfinite(score) and score < best:
                best, best_state, best_iteration = score, copy.deepcopy(flow.state_dict()), iteration
            wall = time.perf_counter() - started
            marks.keep(wall, best_state)
            if wall >= budget:
                break
    marks.keep(math.inf, best_state)
    curve = []
    for (wall, weights), mark in zip(marks.kept, MARKS, strict=False):
        flow.load_state_dict(weights)
        with torch.no_grad():
            test = nll(data.test)
        curve.append({"budget_fraction": mark, "wall_s": min(wall, budget), "nll_per_dim": test / data.dim})
    return {
        "iterations": iteration,
        "ms_per_iter": 1e3 * (time.perf_counter() - started) / iteration,
        "best_iteration": best_iteration,
        "curve": curve,
    }


def run_table(name: str, budget: float, methods: tuple[str, ...], threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    for method in methods:
        started = time.perf_counter()
        out[method] = (_ours if method in OURS else _zuko)(name, method, budget)
        last = out[method]["curve"][-1]
        print(
            f"{name:9s} {method:24s} {last['nll_per_dim']:8.4f} nats/dim  "
            f"{out[method]['iterations']:6d} it  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return out


def _rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, table in results.items():
        finals = {m: r["curve"][-1]["nll_per_dim"] for m, r in table.items()}
        zuko = min((v for m, v in finals.items() if m in ZUKO), default=math.nan)
        for method, r in table.items():
            half = r["curve"][-2]["nll_per_dim"] if len(r["curve"]) > 1 else math.nan
            gap = finals[method] - zuko if method in OURS else math.nan
            rows.append(
                [
                    name,
                    method,
                    r["iterations"],
                    r["ms_per_iter"],
                    half,
                    finals[method],
                    gap,
                    r["best_iteration"],
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per method")
    parser.add_argument("--datasets", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--jobs", type=int, default=2, help="tables trained side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--name", default="bench_tabular")
    args = parser.parse_args(argv)
    methods = tuple(args.methods)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {n: pool.submit(run_table, n, args.budget, methods, args.threads) for n in args.datasets}
        results = {n: f.result() for n, f in futures.items()}
    headers = [
        "table",
        "method",
        "iterations",
        "ms/iter",
        "test NLL/dim at 1/2 budget",
        "test NLL/dim at budget",
        "minus better zuko",
        "best iteration",
    ]
    notes = [
        f"Budget {args.budget:g} s of training per method (validation included, evaluation excluded), "
        f"{args.threads} torch thread(s) per process, {args.jobs} table(s) side by side.",
        "Test NLL in nats per dimension of the standardised table, with the best-validated weights "
        f"(validation: {VAL_FRACTION:.0%} of the training rows, at most {MAX_VAL}, the same rows "
        "for every method).",
        "Ours: exact trace, dopri5 rtol=atol=1e-5 at evaluation; zuko: its exact log-density.",
        "minus better zuko: our NLL/dim minus the better zuko flow's (negative: ours is better).",
    ]
    payload = {"budget_s": args.budget, "threads": args.threads, "marks": MARKS, "results": results}
    write_results(
        args.name, "Real tables: test NLL per dimension vs wall time", payload, headers, _rows(results), notes
    )
    from benchmarks.tabular_curves import write_tabular_curves

    write_tabular_curves(results)


if __name__ == "__main__":
    main()

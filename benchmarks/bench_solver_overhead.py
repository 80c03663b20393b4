"""Solver overhead: solve time / (NFE x one dynamics call), torchdiffeq dopri5 vs our inference dopri5.

A ratio of 1.0 means the solver costs nothing beyond the network; everything above is per-step
Python and tensor bookkeeping. Measured without gradients (the serving case) at batch 1, 100 and
10 000 on a 2-64-64-2 tanh MLP and on FFJORD's exact-trace dynamics with state ``(x, logdet)``.
Targets for the inference path: <= 2.0 at batch 1, <= 1.3 at batch 100, at rtol = atol = 1e-5 and
at the serving default 1e-3.

Run: ``python -m benchmarks.bench_solver_overhead [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from benchmarks.report import median_time, write_results
from service.ml.inference import solve_inference
from service.ml.models import build_model
from service.ml.ode import NfeCounter, SolverConfig, State

BATCHES = (1, 100, 10_000)
TARGETS = {1: 2.0, 100: 1.3}
# 1e-5: the tolerance of the torchdiffeq measurement; 1e-3: the serving default (fewer
# steps per solve, so the fixed cost of starting a solve weighs more).
TOLERANCES = (1e-5, 1e-3)


class MLPDynamics(nn.Module):
    """``f(t, y) = MLP(y)``: 2-64-64-2 with tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y)


class Counted(nn.Module):
    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func, self.calls = func, 0

    def forward(self, t: Tensor, y: State) -> State:
        self.calls += 1
        return self.func(t, y)


def _ffjord_dynamics() -> tuple[nn.Module, float]:
    """FFJORD's exact-trace right-hand side with a perturbed (non-trivial) last layer, and T."""
    model = build_model("ffjord", {}, 2, SolverConfig())
    with torch.no_grad():
        last = model.dynamics.net.layers[-1].linear
        last.weight.normal_(0, 0.5)
        last.bias.normal_(0, 0.2)
    model.dynamics.estimator = "exact"
    return model.dynamics, float(model.end_time.detach())


def _cases() -> list[tuple[str, nn.Module, Callable[[int], State], float]]:
    torch.manual_seed(0)
    mlp = MLPDynamics()
    ffjord, end = _ffjord_dynamics()
    return [
        ("mlp 2-64-64-2", mlp, lambda b: torch.randn(b, 2), 1.0),
        ("ffjord exact trace", ffjord, lambda b: (torch.randn(b, 2), torch.zeros(b)), end),
    ]


def _inner(fn: Callable[[], object], budget_s: float) -> int:
    start = time.perf_counter()
    fn()
    return max(1, int(budget_s / max(time.perf_counter() - start, 1e-6)))


def measure(
    func: nn.Module, y0: State, t: Tensor, config: SolverConfig, repeats: int, budget_s: float
) -> dict[str, Any]:
    """Per repeat, one call timed before and after each solver's solves; medians of the ratios.

    The host's speed drifts within seconds, so each solve sample is divided by the mean of the
    call samples taken right before and right after it, and the median over repeats is reported.
    """
    counted = Counted(func)
    tdq = lambda: odeint(func, y0, t, rtol=config.rtol, atol=config.atol, method="dopri5")  # noqa: E731
    ours = lambda: solve_inference(func, y0, t, config)  # noqa: E731
    t_call = torch.scalar_tensor(float(t[0]) + 0.1, dtype=torch.float64)
    call = lambda: func(t_call, y0)  # noqa: E731
    with torch.no_grad():
        odeint(counted, y0, t, rtol=config.rtol, atol=config.atol, method="dopri5")
        nfe = {"tdq": counted.calls}
        counter = NfeCounter()
        solve_inference(func, y0, t, config, counter)
        nfe["ours"] = counter.forward
        inner = {name: _inner(fn, budget_s) for name, fn in (("call", call), ("tdq", tdq), ("ours", ours))}
        calls: list[float] = []
        solves: dict[str, list[float]] = {"tdq": [], "ours": []}
        ratios: dict[str, list[float]] = {"tdq": [], "ours": []}
        for _ in range(repeats):
            calls.append(median_time(call, 1, inner["call"]))
            for name, fn in (("tdq", tdq), ("ours", ours)):
                solves[name].append(median_time(fn, 1, inner[name]))
                calls.append(median_time(call, 1, inner["call"]))
                around = (calls[-2] + calls[-1]) / 2
                ratios[name].append(solves[name][-1] / (nfe[name] * around))
    results: dict[str, Any] = {"call_s": statistics.median(calls)}
    for name, key in (("tdq", "torchdiffeq"), ("ours", "inference")):
        results[key] = {
            "nfe": nfe[name],
            "solve_s": statistics.median(solves[name]),
            "ratio": statistics.median(ratios[name]),
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats, budget = (3, 0.05) if args.quick else (9, 0.2)
    results, rows = [], []
    for (name, func, make, end), tol in ((case, tol) for tol in TOLERANCES for case in _cases()):
        config = SolverConfig(method="dopri5", rtol=tol, atol=tol)
        for batch in BATCHES:
            torch.manual_seed(1)
            t = torch.tensor([0.0, end], dtype=torch.float64)
            m = measure(func, make(batch), t, config, repeats, budget)
            target = TARGETS.get(batch)
            ours = m["inference"]["ratio"]
            met = "-" if target is None else ("yes" if ours <= target else "no")
            results.append({"dynamics": name, "tolerance": tol, "batch": batch, "target": target, **m})
            rows.append(
                [
                    name,
                    f"{tol:g}",
                    batch,
                    f"{m['call_s'] * 1e6:.1f}",
                    m["torchdiffeq"]["nfe"],
                    f"{m['torchdiffeq']['ratio']:.2f}",
                    m["inference"]["nfe"],
                    f"{ours:.2f}",
                    f"{m['torchdiffeq']['solve_s'] / m['inference']['solve_s']:.2f}x",
                    f"<= {target}" if target else "-",
                    met,
                ]
            )
            print(rows[-1], flush=True)
    headers = [
        "dynamics",
        "rtol = atol",
        "batch",
        "call (us)",
        "tdq NFE",
        "tdq ratio",
        "ours NFE",
        "ours ratio",
        "speed-up",
        "target",
        "met",
    ]
    notes = [
        "ratio = solve time / (NFE x time of one dynamics call), the call timed right before and "
        "right after each solve sample (their mean), median over repeats; 1.0 = zero solver overhead.",
        "dopri5, no grad, t in [0, 1] (MLP) or [0, T=0.5] (FFJORD, "
        "default FFJORDConfig, last layer perturbed so the flow is non-trivial).",
        "torchdiffeq = raw torchdiffeq.odeint(method='dopri5'); ours = service.ml.inference.solve_inference "
        "(NFE may differ: different embedded error weights and step landing).",
        f"{'quick' if args.quick else 'full'} run: {repeats} repeats of call, torchdiffeq, call, ours, "
        "call; call (us) and the solve times are medians.",
    ]
    write_results(
        "bench_solver_overhead",
        "Solver overhead per function evaluation",
        {"tolerances": TOLERANCES, "quick": args.quick, "results": results},
        headers,
        rows,
        notes,
    )


if __name__ == "__main__":
    main()

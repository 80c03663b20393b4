"""Peak memory of one FFJORD training step: adjoint vs backprop as the integration length grows.

Backprop through the solver keeps every stage's activations (memory grows with the number of
steps); the adjoint method re-solves backwards and keeps only the current state (Chen et al.,
arXiv:1806.07366). Each configuration runs in a fresh subprocess; the peak is the growth of
``ru_maxrss`` during one full-size step (loss + backward + optimizer step) above the level reached by
a warm-up step at batch 8, so torch's one-off allocations are not counted. CPU only.

Run: ``python -m benchmarks.bench_memory [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from typing import Any

import torch

from benchmarks.report import write_results

LENGTHS = (1, 4, 10)
BASE_TIME = 0.5


def _solver(method: str, adjoint: bool) -> Any:
    from service.ml.ode import SolverConfig

    if method == "rk4":
        return SolverConfig(method="rk4", step_size=0.05, adjoint=adjoint, max_num_steps=10_000)
    return SolverConfig(rtol=1e-5, atol=1e-5, adjoint=adjoint, max_num_steps=10_000)


def child(mode: str, length: int, method: str, batch: int) -> dict[str, Any]:
    """One measurement (runs inside the subprocess)."""
    from service.ml.training import init_model

    torch.set_num_threads(1)
    config = {
        "hidden_dims": (64, 64, 64),
        "divergence": "exact",
        "integration_time": BASE_TIME * length,
        "learn_integration_time": False,
    }
    model = init_model("ffjord", config, 2, _solver(method, mode == "adjoint"), 0)
    with torch.no_grad():
        model.dynamics.net.layers[-1].linear.weight.normal_(0, 0.3)  # a non-trivial flow
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def step(n: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        x = torch.randn(n, 2, generator=generator)
        model.training_loss(x, generator, 1).loss.backward()
        optimizer.step()

    step(8)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "length": length,
        "method": method,
        "batch": batch,
        "integration_time": BASE_TIME * length,
        "peak_mib": (peak - baseline) / 1024,
        "nfe_forward": model.nfe.forward,
        "nfe_backward": model.nfe.backward,
    }


def _spawn(mode: str, length: int, method: str, batch: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", mode, str(length), method, str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 256 instead of 1024")
    parser.add_argument(
        "--child", nargs=4, metavar=("MODE", "LENGTH", "METHOD", "BATCH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        mode, length, method, batch = args.child
        print(json.dumps(child(mode, int(length), method, int(batch))))
        return
    torch.set_num_threads(1)
    batch = 256 if args.quick else 1024
    results, rows = [], []
    for method in ("rk4", "dopri5"):
        for length in LENGTHS:
            pair = {mode: _spawn(mode, length, method, batch) for mode in ("backprop", "adjoint")}
            results.extend(pair.values())
            b, a = pair["backprop"], pair["adjoint"]
            rows.append(
                [
                    method,
                    f"x{length} (T={BASE_TIME * length:g})",
                    b["nfe_forward"],
                    f"{b['peak_mib']:.1f}",
                    f"{a['peak_mib']:.1f}",
                    f"{b['peak_mib'] / max(a['peak_mib'], 0.1):.1f}x",
                    f"{a['nfe_forward']}+{a['nfe_backward']}",
                ]
            )
            print(rows[-1], flush=True)
    headers = [
        "method",
        "length",
        "NFE fwd",
        "backprop peak (MiB)",
        "adjoint peak (MiB)",
        "backprop/adjoint",
        "adjoint NFE fwd+bwd",
    ]
    notes = [
        f"FFJORD 64-64-64 concat-squash tanh, exact trace, batch {batch}, fixed T = {BASE_TIME} x length; "
        "last layer perturbed so the flow is non-trivial.",
        "rk4 uses step 0.05 (steps grow with T); dopri5 rtol=atol=1e-5.",
        "Peak = growth of ru_maxrss during one step above a warm-up step at batch 8 (fresh process each).",
    ]
    write_results(
        "bench_memory",
        "Peak memory of one training step: adjoint vs backprop",
        {"quick": args.quick, "batch": batch, "results": results},
        headers,
        rows,
        notes,
    )


if __name__ == "__main__":
    main()

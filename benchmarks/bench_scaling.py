"""Cost against dimension: ms per training iteration and per served density point, D = 2 ... 64.

Data: the first D columns of the standardised ``digits`` table (``service.ml.tabular``). For each
D a 2x64 FFJORD (the default width up to D = 16) is first trained by flow matching for
``--warmup`` iterations, so the field is not the near-identity of a fresh net (solver steps
depend on it). Then, on one torch thread:

* training: median ms per iteration (batch 256) of the likelihood objective with the exact trace
  (default RNODE, whose Jacobian norm carries ``D`` tangents, and without the Jacobian penalty: the
  closed-form trace) and with Hutchinson (default rk4 at step 0.5), and of flow matching
  (independent and OT coupling);
* serving: ms per point of a 1000-point density query with the exact trace (what the service does:
  the closed-form trace of :mod:`service.ml.trace`, dopri5 at the default rtol = atol = 1e-3), and
  of one Hutchinson probe solve at the same tolerance. Hutchinson is unbiased but noisy: its
  per-point standard deviation ``sd`` (over 16 probes) needs ``k = (sd / err)^2`` probes to be as
  accurate as the exact trace, whose error ``err`` is its mean gap to a tight solve (rtol = atol =
  1e-7). The Hutchinson cost at equal accuracy is ``k`` times the probe cost (at least one probe).

Run: ``python -m benchmarks.bench_scaling [--dims 2 8 16 32 64]`` (about 2 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks.report import write_results
from service.ml.data import PointData
from service.ml.flow_matching import flow_matching_loss
from service.ml.ode import SolverConfig
from service.ml.tabular import load_tabular
from service.ml.training import TrainConfig, fit, init_model

DIMS = (2, 8, 16, 32, 64)
SERVE = SolverConfig(rtol=1e-3, atol=1e-3)
TIGHT = SolverConfig(rtol=1e-7, atol=1e-7, max_num_steps=100_000)
POINTS, PROBES, BATCH = 1000, 16, 256
FIXED: dict[str, Any] = {"hidden_dims": (64, 64)}
SERIES = {
    "train_exact_ms": "train: likelihood, exact trace",
    "train_exact_kinetic_only_ms": "train: likelihood, exact trace, no Jacobian penalty",
    "train_hutchinson_ms": "train: likelihood, Hutchinson",
    "train_fm_ms": "train: flow matching",
    "train_fm_ot_ms": "train: flow matching OT",
    "serve_exact_ms_per_1000": "serve 1000 points: exact trace",
    "serve_hutchinson_probe_ms_per_1000": "serve 1000 points: one Hutchinson probe (sd 1-8 nats)",
}
"""What the picture draws (Hutchinson at equal accuracy is 4-7 orders of magnitude off its scale)."""


def _data(dim: int) -> PointData:
    split = load_tabular("digits")
    return PointData(f"digits[:{dim}]", split.train[:, :dim].contiguous(), split.test[:, :dim].contiguous())


def _median_ms(step: Any, repeats: int) -> float:
    step()  # warm-up (buffers, lean snapshot)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def _train_ms(model: Any, data: PointData, objective: str, coupling: str, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the step's cost, weights unchanged
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        batch = data.batch(BATCH, generator)
        if objective == "flow_matching":
            loss = flow_matching_loss(model, batch, generator, coupling).loss  # type: ignore[arg-type]
        else:
            loss = model.training_loss(batch, generator, 1).loss
        loss.backward()
        optimizer.step()

    return _median_ms(step, repeats)


@torch.no_grad()
def _serve(model: Any, points: torch.Tensor) -> dict[str, float]:
    model.eval()
    model.query_solver = SERVE
    exact_ms = _median_ms(lambda: model.log_prob(points), 3)
    exact = model.log_prob(points).double()
    model.query_solver = TIGHT
    tight = model.log_prob(points).double()
    model.query_solver = SERVE
    err = float((exact - tight).abs().mean())
    y = model.standardise(points)
    generator = torch.Generator().manual_seed(1)

    def probe() -> torch.Tensor:
        z, logdet = model._to_base(y, "hutchinson", generator, regularize=False)
        return logdet

    probe_ms = _median_ms(probe, 3)
    draws = torch.stack([probe().double() for _ in range(PROBES)])
    sd = float(draws.std(0).mean())
    probes = max(1.0, (sd / max(err, 1e-12)) ** 2)
    return {
        "serve_exact_ms_per_1000": exact_ms * 1000 / points.shape[0],
        "serve_hutchinson_probe_ms_per_1000": probe_ms * 1000 / points.shape[0],
        "exact_error_nats": err,
        "hutchinson_sd_nats": sd,
        "hutchinson_probes_for_equal_accuracy": probes,
        "serve_hutchinson_equal_ms_per_1000": probe_ms * probes * 1000 / points.shape[0],
    }


def _warm(extra: dict[str, Any], data: PointData, warmup: int) -> Any:
    model = init_model("ffjord", extra, data.dim, None, 0)
    fit(model, data, TrainConfig(iterations=warmup, objective="flow_matching", coupling="ot", lr=1e-2))
    return model


def measure(dim: int, warmup: int, repeats: int) -> dict[str, Any]:
    data = _data(dim)
    model = _warm(FIXED, data, warmup)
    row: dict[str, Any] = {"dim": dim}
    hutch = init_model("ffjord", {"divergence": "hutchinson", **FIXED}, dim, None, 0)
    hutch.load_state_dict(model.state_dict())
    row["train_exact_ms"] = _train_ms(model, data, "likelihood", "", repeats)
    no_jacobian = init_model("ffjord", {"jacobian_weight": 0.0, **FIXED}, dim, None, 0)
    no_jacobian.load_state_dict(model.state_dict())
    row["train_exact_kinetic_only_ms"] = _train_ms(no_jacobian, data, "likelihood", "", repeats)
    row["train_hutchinson_ms"] = _train_ms(hutch, data, "likelihood", "", repeats)
    row["train_fm_ms"] = _train_ms(model, data, "flow_matching", "independent", 5 * repeats)
    row["train_fm_ot_ms"] = _train_ms(model, data, "flow_matching", "ot", 5 * repeats)
    points = data.test.repeat(3, 1)[:POINTS]
    row |= _serve(model, points)
    default = _warm({}, data, warmup)  # the default width for D (2 x max(64, 4 D))
    row["default_width"] = default.config.widths(dim)[0]
    row["serve_default_ms_per_1000"] = _serve(default, points)["serve_exact_ms_per_1000"]
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", nargs="+", type=int, default=list(DIMS))
    parser.add_argument("--warmup", type=int, default=400, help="flow-matching iterations before timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(d, args.warmup, args.repeats) for d in args.dims]
    base = rows[0]["serve_exact_ms_per_1000"]
    headers = [
        "D",
        "train exact ms/it",
        "train exact, no Jacobian penalty, ms/it",
        "train Hutchinson ms/it",
        "train FM ms/it",
        "train FM-OT ms/it",
        "serve exact ms/1000 pts",
        f"vs D={rows[0]['dim']}",
        "exact err (nats)",
        "Hutchinson sd (nats)",
        "probes for equal accuracy",
        "serve Hutchinson ms/1000 at equal accuracy",
        "default width",
        "serve exact, default width, ms/1000 pts",
        f"vs D={rows[0]['dim']}, default width",
    ]
    table = [
        [
            r["dim"],
            r["train_exact_ms"],
            r["train_exact_kinetic_only_ms"],
            r["train_hutchinson_ms"],
            r["train_fm_ms"],
            r["train_fm_ot_ms"],
            r["serve_exact_ms_per_1000"],
            r["serve_exact_ms_per_1000"] / base,
            r["exact_error_nats"],
            r["hutchinson_sd_nats"],
            r["hutchinson_probes_for_equal_accuracy"],
            r["serve_hutchinson_equal_ms_per_1000"],
            r["default_width"],
            r["serve_default_ms_per_1000"],
            r["serve_default_ms_per_1000"] / rows[0]["serve_default_ms_per_1000"],
        ]
        for r in rows
    ]
    notes = [
        f"{args.threads} torch thread(s); first D columns of standardised digits; 2x64 FFJORD after "
        f"{args.warmup} flow-matching (OT) iterations; batch {BATCH}; median of {args.repeats} steps "
        "(flow matching: 5x as many).",
        "Likelihood training: default rk4 at step 0.5 (learnt T), RNODE 0.01 (its Jacobian norm needs "
        "the full Jacobian: D tangents), and with jacobian_weight 0 (kinetic only: the closed-form "
        "trace of service.ml.trace); serving: dopri5 rtol=atol=1e-3, 1000 points in one batch, "
        "closed-form trace.",
        "exact err: mean |log p(1e-3) - log p(1e-7)|; Hutchinson sd: per-point standard deviation of "
        f"one Gaussian probe's log-det (over {PROBES} probes); probes = (sd / err)^2, at least 1.",
        "Default width: the service's default net for D (hidden_dims null: 2 x max(64, 4 D)), warmed "
        "up the same way; every other column holds the width at 2x64 to show the cost of D alone.",
    ]
    payload = {"rows": rows, "threads": args.threads}
    write_results("bench_scaling", "Cost against dimension D", payload, headers, table, notes)
    from benchmarks.tabular_curves import write_tabular_curves

    write_tabular_curves(scaling={"rows": rows})


if __name__ == "__main__":
    main()

"""Serving throughput and latency of the real service, against in-process ``log_prob``/``sample``.

Starts ``odeserve up`` (SQLite, embedded Redis, Celery worker, uvicorn) in a temporary directory,
trains a run through ``POST /train`` and the worker, then drives it from 1, 4 and 16 concurrent
clients on 127.0.0.1 (one thread and one keep-alive connection each, pre-encoded requests sent
over raw sockets by ``benchmarks.http_load``) for a fixed time per case:

* ``GET /density`` with 1 point, ``POST /density`` with 1000 points, ``GET /sample`` with n = 1000;
* the 1-point case again on a second service started with batching off
  (``ODESERVE_BATCH_MAX_POINTS=1``), the side-by-side measure of what batching buys.

Each case reports requests/s, points/s, p50/p95/p99 latency and ``served / in-process``: served
points/s over the points/s of the model called in this process at the batch size that ideal merging
of the concurrent requests would give (``c`` points for c 1-point clients, capped by the batch limit).
Targets: ratio >= 0.7; 1-point requests at 16 clients p50 <= 20 ms, p99 <= 100 ms.

Run: ``python -m benchmarks.bench_serve [--quick]`` (2 s per case instead of 5, shorter training).

Profiling the served path (how the per-request costs in service/api were found): run the service,
load it, and sample only the thread holding the GIL, which shows real CPU rather than waits::

    .venv/bin/py-spy record --gil -r 200 -d 10 -f raw -o prof.txt -p <pid of odeserve up>
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.http_load import KeepAliveConnection, encode_request
from benchmarks.report import write_results
from benchmarks.serve_stack import BENCH_RUN, HOST, running_service, train_run
from service.ml.checkpoint import load_checkpoint
from service.ml.models import DensityModel

CLIENTS = (1, 4, 16)
BATCH_MAX_POINTS = 1024  # the service default, stated to the service explicitly below
SERVICE_ENV = {
    "ODESERVE_BATCH_MAX_POINTS": str(BATCH_MAX_POINTS),
    "ODESERVE_LOG_LEVEL": "WARNING",  # no access log line per request
    "ODESERVE_TORCH_THREADS": "1",  # worker and API: 2 threads on a shared 2-core box thrash
}
TARGET_RATIO, TARGET_P50_MS, TARGET_P99_MS = 0.7, 20.0, 100.0

Request = tuple[str, str, bytes | None]  # method, path, body


@dataclass(frozen=True)
class Case:
    name: str
    points: int  # points (or samples) per request
    requests: list[Request]  # cycled through by every client
    kind: str  # "density" or "sample"
    inputs: list[Any]  # what each request asks for: its points (density) or its seed (sample)


def _cases(run_id: str, rng: random.Random) -> list[Case]:
    def points(n: int) -> list[list[float]]:
        return [[round(rng.gauss(0, 2), 4), round(rng.gauss(0, 2), 4)] for _ in range(n)]

    singles = [points(1) for _ in range(256)]
    one = [("GET", f"/density?run_id={run_id}&x={p[0][0]},{p[0][1]}", None) for p in singles]
    bodies = [points(1000) for _ in range(4)]
    many = [("POST", "/density", json.dumps({"run_id": run_id, "points": b}).encode()) for b in bodies]
    seeds = list(range(64))
    draws = [("GET", f"/sample?run_id={run_id}&n=1000&seed={seed}", None) for seed in seeds]
    return [
        Case("GET /density, 1 point", 1, one, "density", [torch.tensor(p) for p in singles]),
        Case("POST /density, 1000 points", 1000, many, "density", [torch.tensor(b) for b in bodies]),
        Case("GET /sample, n=1000", 1000, draws, "sample", seeds),
    ]


def drive(port: int, requests: list[Request], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads send ``requests`` round-robin for ``seconds``; latency stats in ms."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    encoded = [encode_request(method, path, body, HOST, port) for method, path, body in requests]

    def client(index: int) -> None:
        mine, i = latencies[index], index
        with KeepAliveConnection(HOST, port) as conn:
            start.wait()
            while time.perf_counter() < stop_at[0]:
                request = encoded[i % len(encoded)]
                i += 1
                began = time.perf_counter()
                status, _ = conn.exchange(request)
                mine.append(time.perf_counter() - began)
                failures[index] += status != 200

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    merged = sorted(v for mine in latencies for v in mine)

    def pct(q: float) -> float:
        return 1e3 * merged[min(len(merged) - 1, int(q * len(merged)))] if merged else float("nan")

    return {
        "requests": len(merged),
        "failures": sum(failures),
        "requests_per_s": len(merged) / elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": 1e3 * statistics.fmean(merged) if merged else float("nan"),
    }


def _reference_batch(case: Case, clients: int) -> int:
    """Points one pass would hold if the concurrent requests were merged ideally."""
    if case.kind == "sample":
        return case.points  # sample requests are solved one by one (exact per-seed results)
    fit = max(1, BATCH_MAX_POINTS // case.points)
    return case.points * min(clients, fit)


def in_process(model: DensityModel, case: Case, batch: int, budget_s: float) -> float:
    """Points (or samples) per second of the model called directly, no HTTP, on the case's inputs.

    Density: the requests' own points, ``batch // case.points`` consecutive requests per call (the
    solver's work depends on the points); samples: one call per request seed. Whole passes over the
    inputs are timed until ``budget_s`` is spent.
    """
    calls: list[tuple[int, Callable[[], object]]] = []
    if case.kind == "sample":
        for seed in case.inputs:
            calls.append((case.points, partial(_sample, model, case.points, seed)))
    else:
        group = max(1, batch // case.points)
        for i in range(0, len(case.inputs), group):
            x = torch.cat(case.inputs[i : i + group])
            calls.append((x.shape[0], partial(model.log_prob, x)))
    with torch.no_grad():
        calls[0][1]()  # warm
        points, began = 0, time.perf_counter()
        while points == 0 or time.perf_counter() - began < budget_s:
            for size, call in calls:
                call()
                points += size
        return points / (time.perf_counter() - began)


def _sample(model: DensityModel, n: int, seed: int) -> Tensor:
    return model.sample(n, torch.Generator().manual_seed(seed))


def _run_cases(
    port: int, cases: list[Case], model: DensityModel, seconds: float, label: str
) -> list[dict[str, Any]]:
    out = []
    for case in cases:
        for clients in CLIENTS:
            # The host's speed drifts by tens of percent within minutes: the in-process reference is
            # timed right before and right after the served load, and the two are averaged.
            batch = _reference_batch(case, clients)
            budget_s = min(seconds, 2.0) / 2
            before = in_process(model, case, batch, budget_s)
            stats = drive(port, case.requests, clients, seconds)
            after = in_process(model, case, batch, budget_s)
            reference = (before + after) / 2
            served = stats["requests_per_s"] * case.points
            row = {"service": label, "case": case.name, "points": case.points, "clients": clients, **stats}
            row |= {"points_per_s": served, "reference_batch": batch, "reference_points_per_s": reference}
            row |= {"reference_before_points_per_s": before, "reference_after_points_per_s": after}
            row["ratio"] = served / reference
            out.append(row)
            print(
                f"{label:12s} {case.name:28s} c={clients:2d} {stats['requests_per_s']:8.1f} req/s "
                f"{served:9.0f} pts/s p50 {stats['p50_ms']:7.2f} p99 {stats['p99_ms']:7.2f} ms "
                f"ratio {row['ratio']:.2f} fail {stats['failures']}",
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per case and a shorter training run")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 5.0
    torch.set_num_threads(1)  # as the service (ODESERVE_SERVE_TORCH_THREADS=1)
    body = json.loads(json.dumps(BENCH_RUN))
    if args.quick:
        body["training"]["iterations"] = 60
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        data_dir = Path(tmp)
        with running_service(data_dir, SERVICE_ENV) as port:
            began = time.perf_counter()
            run = train_run(port, body)
            train_s = time.perf_counter() - began
            model = load_checkpoint(data_dir / "models_store" / "runs" / run["id"]).model
            cases = _cases(run["id"], random.Random(0))
            rows += _run_cases(port, cases, model, seconds, "batched")
        unbatched = {**SERVICE_ENV, "ODESERVE_BATCH_MAX_POINTS": "1"}
        with running_service(data_dir, unbatched) as port:
            rows += _run_cases(port, cases[:1], model, seconds, "unbatched")
    _report(rows, run, train_s, seconds)


def _targets(rows: list[dict[str, Any]]) -> dict[str, bool]:
    one16 = next(r for r in rows if r["service"] == "batched" and r["clients"] == 16 and r["points"] == 1)
    return {
        "1-point p50 at 16 clients <= 20 ms": one16["p50_ms"] <= TARGET_P50_MS,
        "1-point p99 at 16 clients <= 100 ms": one16["p99_ms"] <= TARGET_P99_MS,
        **{
            f"ratio >= 0.7: {r['case']}, {r['clients']} client(s)": r["ratio"] >= TARGET_RATIO
            for r in rows
            if r["service"] == "batched"
        },
    }


def _report(rows: list[dict[str, Any]], run: dict[str, Any], train_s: float, seconds: float) -> None:
    targets = _targets(rows)
    headers = [
        "service", "case", "clients", "req/s", "points/s", "p50 ms", "p95 ms", "p99 ms",
        "in-process batch", "in-process points/s", "served / in-process", "failed",
    ]  # fmt: skip
    table = [
        [
            r["service"], r["case"], r["clients"], r["requests_per_s"], r["points_per_s"], r["p50_ms"],
            r["p95_ms"], r["p99_ms"], r["reference_batch"], r["reference_points_per_s"], r["ratio"],
            r["failures"],
        ]
        for r in rows
    ]  # fmt: skip
    met = [f"{'met' if ok else 'NOT met'}: {name}" for name, ok in targets.items()]
    notes = [
        f"Run {run['id']} trained by the worker through POST /train in {train_s:.0f} s with the defaults "
        "(no settings: FFJORD 2x64 exact trace, RNODE 0.01, rk4 step 0.5 with the step check); served "
        "by dopri5 at rtol=atol=1e-3 with 1 torch thread.",
        f"{seconds:g} s per case; clients are threads of this process with keep-alive connections, on "
        "the same 2 cores as the service (and other jobs): the load generator competes with the server.",
        "In-process reference: the loaded checkpoint called directly on the same points (seeds) the "
        "clients sent, at the batch ideal merging would give (c points for c 1-point clients; "
        "1000-point requests do not merge under the 1024-point limit; samples are solved per "
        "request), timed right before and right after each case and averaged (the host drifts).",
        "unbatched = a second service with ODESERVE_BATCH_MAX_POINTS=1, same run, same load.",
        *met,
    ]
    payload = {"seconds_per_case": seconds, "run": run, "train_s": train_s, "rows": rows, "targets": targets}
    json_path, md_path = write_results(
        "bench_serve", "Serving: batched REST queries vs in-process calls", payload, headers, table, notes
    )
    print(f"wrote {json_path} and {md_path}")
    for line in met:
        print(line)


if __name__ == "__main__":
    main()

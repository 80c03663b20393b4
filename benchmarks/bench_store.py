"""Checkpoint save and load: local models store vs ``MODELS_STORE=s3://`` (moto on 127.0.0.1).

What the object store adds to a worker's checkpoint (save + publish: upload to a temporary key,
read it back for the sha256 check, server-side copy, delete) and to an API's first load of a run
(fetch the archive into an empty cache, check the digest, unpack, load), for FFJORD checkpoints of
two sizes. "Warm" is a load whose cached copy already matches the digest (files re-hashed, no
request). The S3 server is moto's standalone server, started here as a subprocess on a free port
and stopped by its PID: an in-memory Python server, so these are upper bounds for the request
overhead of a MinIO or AWS endpoint close by, not a network measurement.

Run: ``python -m benchmarks.bench_store [--repeats N]`` (needs the s3 and dev extras).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import median_time, write_results
from service.ml.checkpoint import load_checkpoint, save_checkpoint
from service.ml.models import DensityModel
from service.ml.ode import SolverConfig
from service.ml.training import init_model
from service.storage.models_store import ModelStore, open_store

SIZES = {"small (2-64-64-2)": [64, 64], "large (2-256x3-2)": [256, 256, 256]}
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_moto(port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)


def _model(hidden: list[int]) -> DensityModel:
    return init_model("ffjord", {"hidden_dims": hidden}, 2, SolverConfig(), seed=0)


def _size_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def _measure(model: DensityModel, local: ModelStore, s3: ModelStore, repeats: int) -> dict[str, Any]:
    run_id = str(uuid.uuid4())
    out: dict[str, Any] = {}

    def save_local() -> str:
        return save_checkpoint(local.run_dir(run_id), model)

    def save_s3() -> str:
        digest = save_checkpoint(s3.run_dir(run_id), model)
        s3.publish_checkpoint(run_id, digest)
        return digest

    out["save_local_ms"] = 1e3 * median_time(save_local, repeats)
    out["save_s3_ms"] = 1e3 * median_time(save_s3, repeats)
    digest = save_local()
    assert save_s3() == digest
    out["checkpoint_bytes"] = _size_bytes(local.run_dir(run_id))

    def load_local() -> None:
        load_checkpoint(local.checkpoint_dir(run_id, digest), expected_digest=digest)

    def load_s3_cold() -> None:
        shutil.rmtree(s3.run_dir(run_id), ignore_errors=True)
        load_checkpoint(s3.checkpoint_dir(run_id, digest), expected_digest=digest)

    def load_s3_warm() -> None:
        load_checkpoint(s3.checkpoint_dir(run_id, digest), expected_digest=digest)

    out["load_local_ms"] = 1e3 * median_time(load_local, repeats)
    out["load_s3_cold_ms"] = 1e3 * median_time(load_s3_cold, repeats)
    load_s3_cold()
    out["load_s3_warm_ms"] = 1e3 * median_time(load_s3_warm, repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.update(CREDENTIALS)
    port = _free_port()
    proc = _start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            local = ModelStore(Path(tmp) / "local")
            s3 = open_store("s3://bench/models", Path(tmp) / "cache", endpoint)
            results = {name: _measure(_model(h), local, s3, args.repeats) for name, h in SIZES.items()}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows = [
        [
            name,
            r["checkpoint_bytes"] // 1024,
            r["save_local_ms"],
            r["save_s3_ms"],
            r["save_s3_ms"] - r["save_local_ms"],
            r["load_local_ms"],
            r["load_s3_cold_ms"],
            r["load_s3_cold_ms"] - r["load_local_ms"],
            r["load_s3_warm_ms"],
        ]
        for name, r in results.items()
    ]
    headers = [
        "FFJORD checkpoint", "KiB", "save local ms", "save+publish S3 ms", "S3 adds ms",
        "load local ms", "load S3 cold ms", "S3 adds ms", "load S3 warm ms",
    ]  # fmt: skip
    notes = [
        f"Medians of {args.repeats} repeats; final checkpoints (model.pt, config.json, manifest.json).",
        "S3: moto's in-memory server on 127.0.0.1 (a subprocess); MinIO or AWS nearby would differ.",
        "Save+publish = save into the local cache dir, then upload tmp key, read back + sha256, copy, "
        "delete. Cold load = fetch archive into an empty cache, unpack, verify digest, load.",
        "Warm = the cached copy matches the digest (re-hashed, no request).",
    ]
    payload = {"repeats": args.repeats, "results": results}
    json_path, md_path = write_results(
        "bench_store", "Checkpoint save/load: local store vs S3 (moto)", payload, headers, rows, notes
    )
    print(md_path.read_text())


if __name__ == "__main__":
    main()

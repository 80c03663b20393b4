"""A real S3-compatible server for the tests: moto's standalone server on a free 127.0.0.1 port.

Started as a subprocess (``python -m moto.server``), stopped by its PID. Objects live in the
server's memory, so every session starts with an empty bucket.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from processes import free_port, stop

__all__ = ["CREDENTIALS", "MotoS3"]

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "odeserve-test",
    "AWS_SECRET_ACCESS_KEY": "odeserve-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoS3:
    """``start()`` the server and make a bucket; ``url(prefix)`` is a ``MODELS_STORE`` value."""

    def __init__(self, log_path: Path) -> None:
        self.port, self.log_path = free_port(), log_path
        self.bucket = f"odeserve-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def start(self, timeout: float = 60) -> None:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.endpoint}/moto-api/", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"moto server did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.2)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=self.bucket)

    def fs(self):  # noqa: ANN201 - s3fs.S3FileSystem, imported lazily
        import s3fs

        return s3fs.S3FileSystem(
            key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    def keys(self, prefix: str) -> list[str]:
        """Object keys below ``bucket/prefix``, relative to the bucket."""
        try:
            found = self.fs().find(f"{self.bucket}/{prefix}")
        except FileNotFoundError:
            return []
        return sorted(path[len(self.bucket) + 1 :] for path in found)

    def stop(self) -> None:
        stop(self.proc, timeout=5)

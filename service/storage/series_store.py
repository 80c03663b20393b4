"""Uploaded time-series datasets on disk, beside the point sets of the models store.

A series dataset is one ``torch.save``'d dict of tensors at ``store.dataset_path(id)`` (loaded with
``weights_only=True``): the concatenated ``times`` (float64), ``values`` and ``mask`` (float32,
``(N_total, D)``) and the ``lengths`` of the series. The encoder/extrapolation split is not stored;
it is recomputed on load with ``OBSERVED_FRACTION``, as for the built-in series datasets.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Sequence

import torch

from service.ml.errors import CheckpointError
from service.ml.series import Series, make_series
from service.storage.models_store import ModelStore

__all__ = ["OBSERVED_FRACTION", "load_series", "save_series"]

OBSERVED_FRACTION = 0.5
"""Training on an upload: the encoder sees the first half of each series' span, the rest is scored as
extrapolation (``test_mse_extrap``), as in the built-in ``spirals`` and ``periodic``."""


def save_series(store: ModelStore, dataset_id: uuid.UUID | str, series: Sequence[Series]) -> str:
    """Store ``series`` atomically; returns the file's sha256."""
    packed = {
        "times": torch.cat([s.times.to(torch.float64) for s in series]).contiguous(),
        "values": torch.cat([s.values.to(torch.float32) for s in series]).contiguous(),
        "mask": torch.cat([s.mask.to(torch.float32) for s in series]).contiguous(),
        "lengths": torch.tensor([len(s) for s in series], dtype=torch.int64),
    }
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    return store.write_dataset(dataset_id, buffer.getvalue())


def load_series(
    store: ModelStore,
    dataset_id: uuid.UUID | str,
    expected_sha256: str | None = None,
    observed_fraction: float = OBSERVED_FRACTION,
) -> list[Series]:
    """The stored series, each with its first ``observed_fraction`` of the span as encoder prefix."""
    fix = "upload the dataset again"
    data = store.read_dataset(dataset_id)
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise CheckpointError(f"dataset file for {dataset_id} does not match its checksum", fix=fix)
    packed = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(packed, dict) or set(packed) != {"times", "values", "mask", "lengths"}:
        raise CheckpointError(f"dataset file for {dataset_id} is not a series dataset", fix=fix)
    lengths = packed["lengths"].tolist()
    times = packed["times"].split(lengths)
    values = packed["values"].split(lengths)
    masks = packed["mask"].split(lengths)
    return [make_series(t, v, m, observed_fraction) for t, v, m in zip(times, values, masks, strict=True)]

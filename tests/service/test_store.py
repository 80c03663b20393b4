"""Models store: paths come only from UUIDs; writes are atomic; checksums are verified."""

from __future__ import annotations

import uuid

import pytest
import torch

from service.ml.errors import CheckpointError
from service.storage.models_store import ModelStore, atomic_write


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "runs", "0" * 36, "/tmp/x"])
def test_paths_only_from_uuids(tmp_path, bad):
    store = ModelStore(tmp_path)
    with pytest.raises(ValueError):
        store.run_dir(bad)
    with pytest.raises(ValueError):
        store.dataset_path(bad)


def test_run_dir_is_canonical_and_inside_root(tmp_path):
    run_id = uuid.uuid4()
    store = ModelStore(tmp_path)
    assert (
        store.run_dir(str(run_id).upper())
        == store.run_dir(run_id)
        == tmp_path.resolve() / "runs" / str(run_id)
    )


def test_points_round_trip_and_checksum(tmp_path):
    store, dataset_id = ModelStore(tmp_path), uuid.uuid4()
    points = torch.randn(5, 3)
    digest = store.save_points(dataset_id, points)
    assert torch.equal(store.load_points(dataset_id, digest), points)
    with pytest.raises(CheckpointError):
        store.load_points(dataset_id, "0" * 64)
    with pytest.raises(CheckpointError):
        store.load_points(uuid.uuid4())


def test_atomic_write_leaves_no_temporaries(tmp_path):
    target = tmp_path / "a" / "file.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in target.parent.iterdir()] == ["file.bin"]

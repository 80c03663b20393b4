"""The run resource's honest metrics: a tight re-score beside test_nll, NFE as means over training."""

from __future__ import annotations

import math

import pytest

from service.db import repository as repo

# rk4 with the step check every 6 iterations: iterations 6 and 12 also run the adaptive check, so
# their forward NFE is higher and the last iteration's count is not the run's typical one.
CHECKED = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians", "n_train": 300, "n_test": 50},
    "model_config": {"hidden_dims": [8], "step_check_interval": 6},
    "solver": {"method": "rk4", "step_size": 0.5},
    "training": {"iterations": 12, "batch_size": 32},
}


class WorkerDied(BaseException):
    """Stands for the process dying (not an ``Exception``: nothing records it)."""


def _history(client, run_id: str) -> list[dict]:
    rows = client.get(f"/runs/{run_id}/metrics").json()
    assert [r["iteration"] for r in rows] == list(range(1, 13))
    return rows


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def test_run_resource_carries_tight_nll_and_nfe_means(client, queue):
    run = client.post("/train", json=CHECKED).json()
    assert queue.run_pending() == ["succeeded"]
    done = client.get(f"/runs/{run['id']}").json()
    metrics, rows = done["metrics"], _history(client, run["id"])
    assert metrics["nfe_forward_mean"] == pytest.approx(_mean(rows, "nfe_forward"))
    assert metrics["nfe_backward_mean"] == pytest.approx(_mean(rows, "nfe_backward"))
    assert metrics["nfe_forward_last"] == rows[-1]["nfe_forward"] > metrics["nfe_forward_mean"]
    assert metrics["nfe_backward_last"] == rows[-1]["nfe_backward"]
    assert "nfe_forward" not in metrics  # the last iteration's count is no longer the run's NFE
    assert math.isfinite(metrics["test_nll_tight"]) and math.isfinite(metrics["test_nll_tight_gap"])
    assert metrics["test_nll_tight_points"] == 50  # the whole (small) test set
    assert metrics["test_nll_tight_s"] >= 0 and "rtol=1e-08" in metrics["test_nll_tight_solver"]
    # rk4 trains, dopri5 at 1e-3 serves: the tight re-score agrees closely but is a separate number.
    assert abs(metrics["test_nll_tight"] - metrics["test_nll"]) < 0.05


def test_nfe_means_cover_every_iteration_across_a_resume(client, queue, monkeypatch):
    reference = client.post("/train", json=CHECKED).json()
    assert queue.run_pending() == ["succeeded"]
    run = client.post("/train", json=CHECKED).json()
    original, calls = repo.record_checkpoint, {"n": 0}

    def crashing(session, attempt, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # checkpoint_every = 4: the one at 8 is written, never recorded
            raise WorkerDied
        return original(session, attempt, **kwargs)

    monkeypatch.setattr(repo, "record_checkpoint", crashing)
    with pytest.raises(WorkerDied):
        queue.run_pending()
    monkeypatch.setattr(repo, "record_checkpoint", original)
    queue.enqueue(run["id"])
    assert queue.run_pending() == ["succeeded"]
    done = client.get(f"/runs/{run['id']}").json()
    assert done["attempt"] == 2
    rows = _history(client, run["id"])
    metrics = done["metrics"]
    assert metrics["nfe_forward_mean"] == pytest.approx(_mean(rows, "nfe_forward"))
    assert metrics["nfe_backward_mean"] == pytest.approx(_mean(rows, "nfe_backward"))
    # The resumed attempt trained 5..12 only; its own mean would count the check at 6 and 12 in 8.
    assert metrics["nfe_forward_mean"] != pytest.approx(_mean(rows[4:], "nfe_forward"))
    expected = client.get(f"/runs/{reference['id']}").json()["metrics"]
    for key in ("nfe_forward_mean", "nfe_backward_mean", "nfe_forward_last", "test_nll_tight"):
        assert metrics[key] == pytest.approx(expected[key]), key

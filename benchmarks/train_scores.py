"""``bench_train``'s training runs as data: the curve of one run and the headlines read off it.

Split from :mod:`benchmarks.bench_train`, which records a :class:`Run` per preset and dataset;
``bench_kl_floor`` reads the same curves (``evaluation_at``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from benchmarks.report import RESULTS

__all__ = ["Run", "evaluation_at", "headline", "stored_reference"]


@dataclass
class Run:
    """The curve of one training run."""

    preset: str
    iterations: int = 0
    train_s: float = 0.0
    nfe_forward: int = 0
    nfe_backward: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = max(1, self.iterations)
        return {
            "preset": self.preset,
            "iterations": self.iterations,
            "train_s": self.train_s,
            "s_per_iter": self.train_s / n,
            "nfe_forward_per_iter": self.nfe_forward / n,
            "nfe_backward_per_iter": self.nfe_backward / n,
            "final_test_nll": self.curve[-1]["test_nll"] if self.curve else None,
            "curve": self.curve,
        }


def evaluation_at(curve: list[dict[str, float]], seconds: float) -> dict[str, float] | None:
    """The last evaluation of ``curve`` within ``seconds`` of training (2 % slack for the grid); None
    if there is none."""
    return next((p for p in reversed(curve) if p["train_s"] <= seconds * 1.02), None)


def headline(candidate: Run, reference: Run, entropy: float) -> dict[str, Any]:
    """Time-to-reference-quality ratio, KL at the reference's wall time, NFE/iter ratio."""
    target = reference.curve[-1]["test_nll"]
    reached = next((p for p in candidate.curve if p["test_nll"] <= target), None)
    at_time = evaluation_at(candidate.curve, reference.train_s) or candidate.curve[0]
    ref_nfe = (reference.nfe_forward + reference.nfe_backward) / max(1, reference.iterations)
    nfe = (candidate.nfe_forward + candidate.nfe_backward) / max(1, candidate.iterations)
    return {
        "target_nll": target,
        "time_to_target_ratio": None if reached is None else reached["train_s"] / reference.train_s,
        "kl_at_reference_time": at_time["test_nll"] - entropy,
        "reference_kl": target - entropy,
        "nfe_per_iter_ratio": nfe / ref_nfe,
        "s_per_iter_ratio": (candidate.train_s / max(1, candidate.iterations))
        / (reference.train_s / max(1, reference.iterations)),
    }


def stored_reference(dataset: str) -> Run:
    """The reference run recorded in ``results/bench_train.json`` (run J), for ``--budget`` runs."""
    saved = json.loads((RESULTS / "bench_train.json").read_text())["results"][dataset]["runs"]["reference"]
    run = Run("reference", iterations=saved["iterations"], train_s=saved["train_s"], curve=saved["curve"])
    run.nfe_forward = round(saved["nfe_forward_per_iter"] * saved["iterations"])
    run.nfe_backward = round(saved["nfe_backward_per_iter"] * saved["iterations"])
    return run

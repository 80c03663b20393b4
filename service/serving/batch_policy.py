"""How a :class:`~service.serving.batching.Batcher` merges, waits, bounds and gives up."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchPolicy", "BatchTimeout"]


@dataclass(frozen=True)
class BatchPolicy:
    """How requests are merged: points per pass, wait for companions, and the give-up time."""

    max_points: int = 1024
    max_wait_s: float = 0.005
    timeout_s: float = 60.0
    inline_max_points: int = 64  # small event-loop requests are merged and solved on the loop; 0: never
    max_pass_bytes: int = 256 << 20  # a model call estimated above this is split into chunks
    rtol_floor: float = 1e-6  # served solves are no tighter than this, whatever the run trained at
    atol_floor: float = 1e-6
    max_num_steps: int = 2000  # and take at most this many steps (the run's own budget if lower)
    inline_max_steps: int = 64  # a pass on the event loop past this many steps moves to the thread

    def __post_init__(self) -> None:
        if (
            self.max_points < 1
            or self.max_wait_s < 0
            or self.timeout_s <= 0
            or self.inline_max_points < 0
            or self.max_pass_bytes < 1
            or not 0 < self.rtol_floor < 1
            or not 0 < self.atol_floor < 1
            or self.max_num_steps < 1
            or self.inline_max_steps < 1
        ):
            raise ValueError(
                f"invalid {self}: need max_points >= 1, max_wait_s >= 0, timeout_s > 0, "
                "inline_max_points >= 0, max_pass_bytes >= 1, floors in (0, 1) and step budgets >= 1"
            )


class BatchTimeout(TimeoutError):
    """A request was not answered within the policy's ``timeout_s``."""

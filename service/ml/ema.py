"""Exponential moving average of a model's weights (Polyak averaging; Polyak & Juditsky, 1992).

``fit`` updates the average after every optimizer step; validation, evaluation, checkpoints for
serving and the final weights use it, while the optimizer keeps stepping the raw weights. The
effective decay warms up as ``min(decay, (1 + k) / (10 + k))`` after ``k`` updates, so the first
few hundred steps (far from the optimum) do not linger in the average. Buffers (FFJORD's
standardising map and step scale) are copied, not averaged. :meth:`EMA.state_dict` round-trips
exactly, so a resumed run ends with the same average as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMA", "averaged"]


class EMA:
    """The moving average of ``model``'s floating-point parameters."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.is_floating_point()
        }

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the current weights (after an optimizer step)."""
        decay = self.current_decay()
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), 1 - decay)
        self.updates += 1

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Within the block ``model`` holds the averaged weights; the raw ones come back after."""
        raw = {name: p.detach().clone() for name, p in model.named_parameters() if name in self.shadow}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in raw:
                        p.copy_(raw[name])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (for good: the end of training)."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, Any]:
        """Tensors, a float and an int (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "decay": self.decay,
            "updates": self.updates,
            "shadow": {k: v.detach().clone() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name] = value.detach().clone().to(self.shadow[name])


@contextmanager
def averaged(ema: EMA | None, model: nn.Module) -> Iterator[None]:
    """``ema.applied(model)``, or nothing to do without an average."""
    if ema is None:
        yield
        return
    with ema.applied(model):
        yield

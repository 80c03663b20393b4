"""Domain errors raised by the core.

Each error carries the offending value (when there is one) and a hint that tells the caller how to
fix the problem. The service maps these to RFC 9457 problem+json once, at its edge; the worker
stores ``kind`` and ``str(error)`` on the run row.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "OdeServeError",
    "SolverError",
    "StoreUnavailable",
    "TrainingCanceled",
    "TrainingPaused",
    "UnknownNameError",
]


class OdeServeError(Exception):
    """Base class: a message, the value that caused it and how to fix it."""

    kind = "odeserve_error"

    def __init__(
        self, message: str, *, value: Any = None, fix: str | None = None, field: str | None = None
    ) -> None:
        self.message = message
        self.value = value
        self.fix = fix
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.message
        if self.fix:
            text = f"{text}; fix: {self.fix}"
        return text


class SolverError(OdeServeError):
    """The ODE solver could not finish: step budget exhausted, step underflow, non-finite state."""

    kind = "solver_error"


class DataError(OdeServeError):
    """A dataset or a batch of query points is malformed (ragged, non-finite, wrong dimension)."""

    kind = "data_error"


class CheckpointError(OdeServeError):
    """A checkpoint directory is missing, corrupt, of an unknown format or fails its checksum."""

    kind = "checkpoint_error"


class StoreUnavailable(OdeServeError):
    """The object store holding checkpoints and uploads cannot be reached or refuses access."""

    kind = "store_unavailable"


class ConfigError(OdeServeError):
    """A configuration value is invalid in combination with others (e.g. model vs dataset)."""

    kind = "config_error"


class UnknownNameError(OdeServeError):
    """A registry lookup failed; the message lists the valid names."""

    kind = "unknown_name"

    def __init__(self, what: str, name: str, valid: list[str] | tuple[str, ...]) -> None:
        self.valid = sorted(valid)
        super().__init__(
            f"unknown {what} {name!r}",
            value=name,
            fix=f"use one of: {', '.join(self.valid)}",
            field=what,
        )


class TrainingCanceled(OdeServeError):
    """Raised inside ``fit`` when its ``should_stop`` callback asks to stop."""

    kind = "canceled"


class TrainingPaused(Exception):
    """Raised by a ``should_stop`` callback to pause ``fit``: it checkpoints the last finished step
    (through ``on_checkpoint``) and re-raises. The run is meant to resume elsewhere, not to end; a
    worker's warm shutdown is the one user. Not an :class:`OdeServeError`: nothing failed."""

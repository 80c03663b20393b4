"""RFC 9457 problem details, the body of every error response (``application/problem+json``).

Split from :mod:`service.schemas.runs`, which re-exports these; ``service.api.errors`` builds them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["Problem", "ProblemField"]


class ProblemField(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[ProblemField] = Field(default_factory=list)

"""Shared CLI plumbing: one-line errors, thread settings, CSV output."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import typer
from pydantic import ValidationError

from service.ml.errors import OdeServeError

__all__ = ["cli_errors", "configure_threads", "write_rows"]

F = TypeVar("F", bound=Callable[..., Any])


def _validation_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"invalid {where}: {first['msg']} (got {first.get('input')!r})"


def cli_errors(func: F) -> F:
    """Turn domain and validation errors into one clear line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OdeServeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except ValidationError as exc:
            typer.echo(f"error: {_validation_line(exc)}", err=True)
            raise typer.Exit(2) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            typer.echo(f"error: {exc.strerror}: {exc.filename}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def configure_threads(threads: int | None) -> None:
    """Use the given number of intra-op threads (default: all cores, at most 8)."""
    count = threads or min(8, os.cpu_count() or 1)
    torch.set_num_threads(max(1, count))


def write_rows(rows: Iterable[Sequence[float]], output: Path | None) -> None:
    """Comma-separated rows to ``output`` or stdout, full float precision."""
    lines = (",".join(repr(float(v)) for v in row) for row in rows)
    if output is None:
        for line in lines:
            sys.stdout.write(line + "\n")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(output)

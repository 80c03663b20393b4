"""``odeserve up``: API + worker + broker + database on one machine (see ``service.cli.embedded``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["migrate", "reconcile", "up"]


def up(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8000,
    data_dir: Annotated[
        Path, typer.Option(help="SQLite DB, embedded Redis and models store (unless env says otherwise).")
    ] = Path("data"),
) -> None:
    """Run the REST service locally; DATABASE_URL / REDIS_URL / MODELS_STORE are used when set."""
    from service.cli.embedded import run_embedded

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_embedded(host, port, data_dir)


def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply database migrations to DATABASE_URL (default: the SQLite file `odeserve up` uses)."""
    from service.config import Settings
    from service.db.migrate import upgrade

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    url = Settings().database_url
    upgrade(url, revision)
    typer.echo(f"database at revision {revision}")


def reconcile() -> None:
    """One reconciler pass: republish queued runs the broker lost and requeue runs of dead workers."""
    from service.config import Settings
    from service.db import make_engine, make_session_factory
    from service.jobs.queue import CeleryDispatcher
    from service.jobs.reconcile import reconcile_once

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    report = reconcile_once(
        settings, make_session_factory(make_engine(settings.database_url)), CeleryDispatcher(settings)
    )
    typer.echo(
        f"republished {len(report.republished)}, requeued {len(report.requeued)}, "
        f"canceled {len(report.canceled)}, still in the broker {len(report.skipped_live)}"
        + (f"; broker error: {report.broker_error}" if report.broker_error else "")
    )
    if report.broker_error:
        raise typer.Exit(1)

"""Runs: the device a run asked for (``auto``, ``cpu`` or ``cuda``), which picks its Celery queue.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 13:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("device_request", sa.String(length=8), nullable=False, server_default="auto")
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("device_request")

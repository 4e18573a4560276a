"""worklist order index: steps in start order, so that a broad C-FIND stops at the
result cap instead of sorting every step

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_sps_start', 'scheduled_procedure_step', ['start_datetime', 'id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_sps_start', table_name='scheduled_procedure_step')

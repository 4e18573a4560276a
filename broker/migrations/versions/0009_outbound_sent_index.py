"""outbound messages indexed by when they were sent (the console's traffic per minute)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_outbound_sent', 'outbound_message', ['sent_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_outbound_sent', table_name='outbound_message')

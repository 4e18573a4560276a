"""performers bound to the AE titles they act as on the Worklist Service (UPS-RS):
console_user.ae_titles, and the AE title a workitem was claimed as: ups_workitem.claimed_as

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('console_user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ae_titles', sa.JSON(), nullable=False,
                                      server_default='[]'))
    with op.batch_alter_table('ups_workitem', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_as', sa.String(length=16), nullable=False,
                                      server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('ups_workitem', schema=None) as batch_op:
        batch_op.drop_column('claimed_as')
    with op.batch_alter_table('console_user', schema=None) as batch_op:
        batch_op.drop_column('ae_titles')

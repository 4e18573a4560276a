"""duplicates by content: a message is a duplicate only when (MSH-3, MSH-4, MSH-10)
and its content match; warnings kept on the message

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from broker.hl7.message import content_hash

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table('inbound_message') as batch:
        batch.add_column(sa.Column('content_hash', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('control_id_reused', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column('warnings', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('warning_count', sa.Integer(), nullable=False,
                                   server_default='0'))
        batch.drop_constraint('uq_inbound_dedup', type_='unique')
    _backfill_hashes()
    with op.batch_alter_table('inbound_message') as batch:
        batch.alter_column('control_id_reused', server_default=None)
        batch.alter_column('warning_count', server_default=None)
        batch.create_unique_constraint(
            'uq_inbound_dedup',
            ['sending_application', 'sending_facility', 'control_id', 'content_hash'])


def _backfill_hashes() -> None:
    """Stored messages keep deduplicating their resends: hash them as new ones are."""
    conn = op.get_bind()
    table = sa.table('inbound_message', sa.column('id', sa.Integer),
                     sa.column('raw', sa.LargeBinary), sa.column('content_hash', sa.String))
    last = 0
    while True:
        rows = conn.execute(sa.select(table.c.id, table.c.raw).where(table.c.id > last)
                            .order_by(table.c.id).limit(_BATCH)).all()
        if not rows:
            return
        for pk, raw in rows:
            conn.execute(table.update().where(table.c.id == pk)
                         .values(content_hash=content_hash(bytes(raw or b""))))
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table('inbound_message') as batch:
        batch.drop_constraint('uq_inbound_dedup', type_='unique')
        batch.drop_column('warning_count')
        batch.drop_column('warnings')
        batch.drop_column('control_id_reused')
        batch.drop_column('content_hash')
        batch.create_unique_constraint(
            'uq_inbound_dedup', ['sending_application', 'sending_facility', 'control_id'])

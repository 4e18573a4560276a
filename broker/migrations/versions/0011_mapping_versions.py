"""mapping versions: deployed profile sets, their deployments, bulk replays; the profile
and version recorded on each message and worklist query

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mapping_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('sources', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('comment', sa.String(length=500), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('mapping_version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mapping_version_digest'), ['digest'], unique=False)

    op.create_table('mapping_deployment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('deployed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deployed_by', sa.String(length=64), nullable=False),
    sa.Column('comment', sa.String(length=500), nullable=False),
    sa.ForeignKeyConstraint(['version'], ['mapping_version.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('replay_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('criteria', sa.JSON(), nullable=False),
    sa.Column('message_ids', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('inbound_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('profile', sa.String(length=64), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('profile_version', sa.Integer(), nullable=True))
    with op.batch_alter_table('worklist_query', schema=None) as batch_op:
        batch_op.add_column(sa.Column('modality_profile', sa.String(length=64), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('profile_version', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('worklist_query', schema=None) as batch_op:
        batch_op.drop_column('profile_version')
        batch_op.drop_column('modality_profile')
    with op.batch_alter_table('inbound_message', schema=None) as batch_op:
        batch_op.drop_column('profile_version')
        batch_op.drop_column('profile')
    op.drop_table('replay_run')
    op.drop_table('mapping_deployment')
    with op.batch_alter_table('mapping_version', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mapping_version_digest'))
    op.drop_table('mapping_version')

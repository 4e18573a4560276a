"""ups: Unified Procedure Step workitems, subscriptions and events (PS3.4 Annex CC)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ups_delivery',
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('last_event_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('ae_title')
    )
    op.create_table('ups_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('workitem_uid', sa.String(length=64), nullable=False),
    sa.Column('event_type_id', sa.Integer(), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('recipient', sa.String(length=16), nullable=True),
    sa.Column('cause', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ups_event', schema=None) as batch_op:
        batch_op.create_index('ix_ups_event_workitem', ['workitem_uid', 'id'], unique=False)

    op.create_table('ups_subscription',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('workitem_uid', sa.String(length=64), nullable=False),
    sa.Column('deletion_lock', sa.Boolean(), nullable=False),
    sa.Column('filter', sa.JSON(), nullable=True),
    sa.Column('suspended', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('ae_title', 'workitem_uid', name='uq_ups_subscription')
    )
    with op.batch_alter_table('ups_subscription', schema=None) as batch_op:
        batch_op.create_index('ix_ups_subscription_uid', ['workitem_uid'], unique=False)

    op.create_table('ups_workitem',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uid', sa.String(length=64), nullable=False),
    sa.Column('sps_pk', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('transaction_uid', sa.String(length=64), nullable=False),
    sa.Column('cancel_requested_by', sa.String(length=64), nullable=False),
    sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancel_reason', sa.String(length=400), nullable=False),
    sa.Column('priority', sa.String(length=8), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('worklist_label', sa.String(length=64), nullable=False),
    sa.Column('start_datetime', sa.String(length=26), nullable=False),
    sa.Column('expected_completion', sa.String(length=26), nullable=False),
    sa.Column('input_readiness', sa.String(length=16), nullable=False),
    sa.Column('station_name_code', sa.String(length=16), nullable=False),
    sa.Column('station_class_code', sa.String(length=16), nullable=False),
    sa.Column('station_location_code', sa.String(length=16), nullable=False),
    sa.Column('workitem_code_value', sa.String(length=16), nullable=False),
    sa.Column('workitem_code_scheme', sa.String(length=16), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('name_key_alphabetic', sa.String(length=200), nullable=False),
    sa.Column('name_key_ideographic', sa.String(length=200), nullable=False),
    sa.Column('name_key_phonetic', sa.String(length=200), nullable=False),
    sa.Column('birth_date', sa.String(length=8), nullable=False),
    sa.Column('sex', sa.String(length=16), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sps_pk'], ['scheduled_procedure_step.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('uid')
    )
    with op.batch_alter_table('ups_workitem', schema=None) as batch_op:
        batch_op.create_index('ix_ups_start', ['start_datetime', 'id'], unique=False)
        batch_op.create_index('ix_ups_state_start', ['state', 'start_datetime'], unique=False)
        batch_op.create_index(batch_op.f('ix_ups_workitem_sps_pk'), ['sps_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_ups_workitem_station_name_code'), ['station_name_code'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('ups_workitem', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ups_workitem_station_name_code'))
        batch_op.drop_index(batch_op.f('ix_ups_workitem_sps_pk'))
        batch_op.drop_index('ix_ups_state_start')
        batch_op.drop_index('ix_ups_start')

    op.drop_table('ups_workitem')
    with op.batch_alter_table('ups_subscription', schema=None) as batch_op:
        batch_op.drop_index('ix_ups_subscription_uid')

    op.drop_table('ups_subscription')
    with op.batch_alter_table('ups_event', schema=None) as batch_op:
        batch_op.drop_index('ix_ups_event_workitem')

    op.drop_table('ups_event')
    op.drop_table('ups_delivery')

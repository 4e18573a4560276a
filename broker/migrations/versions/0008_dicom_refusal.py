"""dicom refusal: refused DICOM associations and connections, counted per calling AE
title, called AE title, address and reason

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dicom_refusal',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=False),
    sa.Column('called_ae_title', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=100), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dicom_refusal', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dicom_refusal_at'), ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dicom_refusal', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dicom_refusal_at'))
    op.drop_table('dicom_refusal')

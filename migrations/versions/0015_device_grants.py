"""device grants: device authorization grants in progress (RFC 8628)

Revision ID: 0015_device_grants
Revises: 0014_machine_credentials
Create Date: 2026-12-03 00:00:00

device_grants holds each Connect of a provider with flow = "device" while the person answers
at the provider: the device code, user code and complete verification URL encrypted in one
ciphertext (cleared when the grant ends), the polling interval and the next poll's claim, and
how it ended (the connection it made, or why not).
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0015_device_grants'
down_revision = '0014_machine_credentials'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('device_grants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=True),
    sa.Column('key_id', sa.String(length=8), nullable=True),
    sa.Column('verification_uri', sa.String(length=2048), nullable=False),
    sa.Column('interval_seconds', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_poll_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('polls', sa.Integer(), nullable=False),
    sa.Column('last_polled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('connection_id', sa.Integer(), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'approved', 'denied', 'expired', 'failed')", name=op.f('ck_device_grants_status')),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], name=op.f('fk_device_grants_connection_id_connections'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_device_grants_created_by_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_grants'))
    )
    with op.batch_alter_table('device_grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_grants_created_by_id'), ['created_by_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_device_grants_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_device_grants_key_id'), ['key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_device_grants_status_next_poll_at'), ['status', 'next_poll_at'], unique=False)


def downgrade():
    with op.batch_alter_table('device_grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_grants_status_next_poll_at'))
        batch_op.drop_index(batch_op.f('ix_device_grants_key_id'))
        batch_op.drop_index(batch_op.f('ix_device_grants_expires_at'))
        batch_op.drop_index(batch_op.f('ix_device_grants_created_by_id'))

    op.drop_table('device_grants')

"""notifications: the alerts outbox, deliveries per channel, attempts; connections.failing_since

Revision ID: 0009_notifications
Revises: 0008_reconnect_links
Create Date: 2026-12-03 00:00:00

An alert is written to notifications in the transaction of the state change that caused it
(unique dedupe_key: one alert per state change); the worker turns it into one delivery per
channel, claims each with a conditional UPDATE and records every attempt. failing_since marks
the start of a connection's run of transient refresh failures (rule refresh_failing).
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0009_notifications'
down_revision = '0008_reconnect_links'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True))

    op.create_table('notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=False),
    sa.Column('dedupe_key', sa.String(length=255), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=True),
    sa.Column('connection_id', sa.Integer(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('reconnect_url_ciphertext', sa.LargeBinary(), nullable=True),
    sa.Column('digest_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(
        ['digest_id'], ['notifications.id'],
        name=op.f('fk_notifications_digest_id_notifications'), ondelete='SET NULL'
    ),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_notifications_dedupe_key'))
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_notifications_connection_id'), ['connection_id'], unique=False
        )
        batch_op.create_index(
            batch_op.f('ix_notifications_created_at'), ['created_at'], unique=False
        )
        batch_op.create_index(
            batch_op.f('ix_notifications_digest_id'), ['digest_id'], unique=False
        )
        batch_op.create_index(
            batch_op.f('ix_notifications_dispatched_at_id'), ['dispatched_at', 'id'], unique=False
        )

    op.create_table('notification_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('notification_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claim', sa.String(length=64), nullable=True),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.CheckConstraint(
        "status IN ('pending', 'delivered', 'abandoned')",
        name=op.f('ck_notification_deliveries_status'),
    ),
    sa.ForeignKeyConstraint(
        ['notification_id'], ['notifications.id'],
        name=op.f('fk_notification_deliveries_notification_id_notifications'),
        ondelete='CASCADE'
    ),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_deliveries')),
    sa.UniqueConstraint(
        'notification_id', 'channel',
        name=op.f('uq_notification_deliveries_notification_id_channel')
    )
    )
    with op.batch_alter_table('notification_deliveries', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_notification_deliveries_status_next_attempt_at'),
            ['status', 'next_attempt_at'], unique=False
        )
        batch_op.create_index(
            batch_op.f('ix_notification_deliveries_channel_status'),
            ['channel', 'status'], unique=False
        )

    op.create_table('delivery_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('attempted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(
        ['delivery_id'], ['notification_deliveries.id'],
        name=op.f('fk_delivery_attempts_delivery_id_notification_deliveries'),
        ondelete='CASCADE'
    ),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_attempts'))
    )
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_delivery_attempts_delivery_id'), ['delivery_id'], unique=False
        )
        batch_op.create_index(
            batch_op.f('ix_delivery_attempts_channel_attempted_at'),
            ['channel', 'attempted_at'], unique=False
        )


def downgrade():
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_attempts_channel_attempted_at'))
        batch_op.drop_index(batch_op.f('ix_delivery_attempts_delivery_id'))

    op.drop_table('delivery_attempts')
    with op.batch_alter_table('notification_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notification_deliveries_channel_status'))
        batch_op.drop_index(batch_op.f('ix_notification_deliveries_status_next_attempt_at'))

    op.drop_table('notification_deliveries')
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notifications_dispatched_at_id'))
        batch_op.drop_index(batch_op.f('ix_notifications_digest_id'))
        batch_op.drop_index(batch_op.f('ix_notifications_created_at'))
        batch_op.drop_index(batch_op.f('ix_notifications_connection_id'))

    op.drop_table('notifications')
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_column('failing_since')

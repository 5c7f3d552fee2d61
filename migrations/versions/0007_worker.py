"""worker: heartbeats, scheduled jobs' claims and SQLite's refresh leases

Revision ID: 0007_worker
Revises: 0006_throttle
Create Date: 2026-12-03 00:00:00

`flask vault worker` records a heartbeat per worker after each cycle and claims scheduled
jobs with a conditional UPDATE of their worker_jobs row. On SQLite a refresh claims its
connection in refresh_leases instead of holding the write lock across the provider call.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0007_worker'
down_revision = '0006_throttle'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('worker_heartbeats',
    sa.Column('worker_id', sa.String(length=255), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_cycle_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('interval_seconds', sa.Integer(), nullable=False),
    sa.Column('last_ok', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('worker_id', name=op.f('pk_worker_heartbeats'))
    )
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_worker_heartbeats_last_cycle_at'), ['last_cycle_at'], unique=False
        )

    op.create_table('worker_jobs',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('next_run_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_ok', sa.Boolean(), nullable=True),
    sa.Column('last_summary', sa.Text(), nullable=True),
    sa.Column('last_worker_id', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_worker_jobs'))
    )

    op.create_table('refresh_leases',
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('claim', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(
        ['connection_id'], ['connections.id'],
        name=op.f('fk_refresh_leases_connection_id_connections'), ondelete='CASCADE'
    ),
    sa.PrimaryKeyConstraint('connection_id', name=op.f('pk_refresh_leases'))
    )


def downgrade():
    op.drop_table('refresh_leases')
    op.drop_table('worker_jobs')
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_worker_heartbeats_last_cycle_at'))

    op.drop_table('worker_heartbeats')

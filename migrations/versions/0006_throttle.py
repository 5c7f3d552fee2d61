"""throttle_counters: sign-in and abuse throttling counted in the database

Revision ID: 0006_throttle
Revises: 0005_users_session_epoch
Create Date: 2026-12-01 00:00:00

Sign-in failures were counted by Flask-Limiter in each process's memory, so every worker and
every instance had an allowance of its own. One row per counter (a keyed hash, never an
e-mail address), reserved with one INSERT ... ON CONFLICT DO UPDATE ... RETURNING.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0006_throttle'
down_revision = '0005_users_session_epoch'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('throttle_counters',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('hits', sa.Integer(), nullable=False),
    sa.Column('window_ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_throttle_counters'))
    )
    with op.batch_alter_table('throttle_counters', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_throttle_counters_window_ends_at'), ['window_ends_at'], unique=False
        )


def downgrade():
    with op.batch_alter_table('throttle_counters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_throttle_counters_window_ends_at'))

    op.drop_table('throttle_counters')

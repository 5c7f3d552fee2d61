"""provider limits: reconnect-by dates and credential checks

Revision ID: 0010_provider_limits
Revises: 0009_notifications
Create Date: 2026-12-03 00:00:00

Adds to ``connections`` when consent was given, the "reconnect by" date with its reason,
and the last credential check with the next one's time (the workers' claim). Existing rows
count consent from their creation; their reconnect-by dates stay empty until
``flask --app app vault recompute-limits`` (or the worker's next check) fills them in.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0010_provider_limits'
down_revision = '0009_notifications'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('consented_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('reconnect_by', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('reconnect_reason', sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column('last_checked_at', sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column('check_result', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('check_message', sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column('check_failure_count', sa.Integer(), server_default='0', nullable=False)
        )
        batch_op.add_column(sa.Column('next_check_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            batch_op.f('ix_connections_reconnect_by'), ['reconnect_by'], unique=False
        )
        batch_op.create_index(
            batch_op.f('ix_connections_next_check_at'), ['next_check_at'], unique=False
        )
    # The best known consent time of existing connections is their creation.
    op.execute("UPDATE connections SET consented_at = created_at")


def downgrade():
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connections_next_check_at'))
        batch_op.drop_index(batch_op.f('ix_connections_reconnect_by'))
        batch_op.drop_column('next_check_at')
        batch_op.drop_column('check_failure_count')
        batch_op.drop_column('check_message')
        batch_op.drop_column('check_result')
        batch_op.drop_column('last_checked_at')
        batch_op.drop_column('reconnect_reason')
        batch_op.drop_column('reconnect_by')
        batch_op.drop_column('consented_at')

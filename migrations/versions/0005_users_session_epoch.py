"""users.session_epoch: signing out ends every session of the user

Revision ID: 0005_users_session_epoch
Revises: 0004_audit_connection_no_fk
Create Date: 2026-11-30 00:10:00

Sessions are signed cookies; a copy of one kept working until it idled out, even after its
owner signed out. The epoch is part of the marker each session carries, and signing out
moves it on. Existing users start at 0, which keeps their current sessions valid.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0005_users_session_epoch'
down_revision = '0004_audit_connection_no_fk'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('session_epoch', sa.Integer(), server_default='0', nullable=False)
        )


def downgrade():
    # recreate="never": on SQLite, rebuilding users (the batch default for dropping a column)
    # would drop the table and fire ON DELETE SET NULL in the tables that refer to it.
    with op.batch_alter_table('users', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('session_epoch')

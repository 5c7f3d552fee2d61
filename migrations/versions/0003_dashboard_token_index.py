"""dashboard: covering index on tokens (kind, connection_id, expires_at, is_valid)

Revision ID: 0003_dashboard_token_index
Revises: 0002_oauth_states
Create Date: 2026-11-29 20:45:00

The providers overview, connections list and health page join each token kind's expiry and
validity to its connection; this index holds every column they read, so PostgreSQL answers
them with index-only scans instead of reading the ciphertext-heavy table.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0003_dashboard_token_index'
down_revision = '0002_oauth_states'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_tokens_kind_connection_id_expires_at_is_valid'),
            ['kind', 'connection_id', 'expires_at', 'is_valid'],
            unique=False,
        )


def downgrade():
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tokens_kind_connection_id_expires_at_is_valid'))

"""reserved for issue 18 (one-statement token API); empty unless that work needs a schema change

Revision ID: 0017_token_api
Revises: 0016_connection_counts
Create Date: 2026-12-03 00:00:00
"""

# revision identifiers, used by Alembic.
revision = '0017_token_api'
down_revision = '0016_connection_counts'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

"""reserved for issue 18 (exact counts for flat pages); empty unless that work needs a schema change

Revision ID: 0016_connection_counts
Revises: 0015_device_grants
Create Date: 2026-12-03 00:00:00
"""

# revision identifiers, used by Alembic.
revision = '0016_connection_counts'
down_revision = '0015_device_grants'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

"""reconnect_links (placeholder)

Revision ID: 0008_reconnect_links
Revises: 0007_worker
Create Date: 2026-12-03 00:00:00
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401


# revision identifiers, used by Alembic.
revision = '0008_reconnect_links'
down_revision = '0007_worker'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

"""notifications outbox and channels (placeholder)

Revision ID: 0009_notifications
Revises: 0008_reconnect_links
Create Date: 2026-12-03 00:00:00
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401


# revision identifiers, used by Alembic.
revision = '0009_notifications'
down_revision = '0008_reconnect_links'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

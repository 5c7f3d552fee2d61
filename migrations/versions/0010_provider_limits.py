"""provider limits: reconnect-by dates and credential checks (placeholder)

Revision ID: 0010_provider_limits
Revises: 0006_throttle
Create Date: 2026-12-03 00:00:00
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401


# revision identifiers, used by Alembic.
revision = '0010_provider_limits'
down_revision = '0006_throttle'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

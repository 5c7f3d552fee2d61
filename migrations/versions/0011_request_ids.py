"""request ids on audit rows (placeholder)

Revision ID: 0011_request_ids
Revises: 0006_throttle
Create Date: 2026-12-03 00:00:00
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401


# revision identifiers, used by Alembic.
revision = '0011_request_ids'
down_revision = '0006_throttle'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

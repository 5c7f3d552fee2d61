"""audit chain seals, checkpoints (placeholder)

Revision ID: 0012_audit_chain
Revises: 0011_request_ids
Create Date: 2026-12-03 00:00:00
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401


# revision identifiers, used by Alembic.
revision = '0012_audit_chain'
down_revision = '0011_request_ids'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

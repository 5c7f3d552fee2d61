"""request ids on audit rows: audit_events.request_id

Revision ID: 0011_request_ids
Revises: 0010_provider_limits
Create Date: 2026-12-03 00:00:00

Each audit row written during a request keeps that request's X-Request-ID, so an auditor can
find its log lines. Existing rows and rows written by commands have none (NULL). No index: the
token API writes a row per hand-out.
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0011_request_ids'
down_revision = '0010_provider_limits'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=128), nullable=True))


def downgrade():
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_column('request_id')

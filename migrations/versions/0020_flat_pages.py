"""the health page's latest needs-reconnect connections through an index (issue 18)

Revision ID: 0020_flat_pages
Revises: 0019_admin_pages
Create Date: 2026-12-03 00:00:00
"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0020_flat_pages'
down_revision = '0019_admin_pages'
branch_labels = None
depends_on = None


# A plain CREATE INDEX, not batch mode: rebuilding connections on SQLite would drop its
# count triggers (docs/architecture.md, "Exact counts and flat pages").
def upgrade():
    op.create_index(op.f('ix_connections_status_updated_at'), 'connections',
                    ['status', 'updated_at'], unique=False)


def downgrade():
    op.drop_index(op.f('ix_connections_status_updated_at'), table_name='connections')

"""reserved for issue 14 (service keys and users dashboards); empty unless that work needs a schema change

Revision ID: 0019_admin_pages
Revises: 0018_ownership_pages
Create Date: 2026-12-03 00:00:00
"""

# revision identifiers, used by Alembic.
revision = '0019_admin_pages'
down_revision = '0018_ownership_pages'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

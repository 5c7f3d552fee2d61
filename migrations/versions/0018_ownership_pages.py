"""reserved for issue 14 (owners, tags, offboarding); empty unless that work needs a schema change

Revision ID: 0018_ownership_pages
Revises: 0017_token_api
Create Date: 2026-12-03 00:00:00
"""

# revision identifiers, used by Alembic.
revision = '0018_ownership_pages'
down_revision = '0017_token_api'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

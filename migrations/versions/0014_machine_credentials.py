"""reserved for issue 16 (service accounts, jwt_bearer, private_key_jwt); empty unless that work needs a schema change

Revision ID: 0014_machine_credentials
Revises: 0013_ownership
Create Date: 2026-12-03 00:00:00
"""

# revision identifiers, used by Alembic.
revision = '0014_machine_credentials'
down_revision = '0013_ownership'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

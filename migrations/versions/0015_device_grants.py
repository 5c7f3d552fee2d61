"""reserved for issue 16 (device authorization grant); empty unless that work needs a schema change

Revision ID: 0015_device_grants
Revises: 0014_machine_credentials
Create Date: 2026-12-03 00:00:00
"""

# revision identifiers, used by Alembic.
revision = '0015_device_grants'
down_revision = '0014_machine_credentials'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

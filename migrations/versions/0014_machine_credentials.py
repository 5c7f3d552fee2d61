"""machine credentials: service-account key files and the id of the key a connection signs with

Revision ID: 0014_machine_credentials
Revises: 0013_ownership
Create Date: 2026-12-03 00:00:00

tokens.kind gains 'private_key' (a service account's JSON key file, encrypted like every other
value); connections gain credential_key_id, the id of the private key a key-based credential
signs with (never secret; shown on pages and in the token API).
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0014_machine_credentials'
down_revision = '0013_ownership'
branch_labels = None
depends_on = None

_KINDS = "'access', 'refresh', 'id', 'api_key', 'api_secret'"


def upgrade():
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('credential_key_id', sa.String(length=128), nullable=True))
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_tokens_kind'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_tokens_kind'), f"kind IN ({_KINDS}, 'private_key')")


def downgrade():
    op.execute("DELETE FROM tokens WHERE kind = 'private_key'")
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_tokens_kind'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_tokens_kind'), f"kind IN ({_KINDS})")
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_column('credential_key_id')

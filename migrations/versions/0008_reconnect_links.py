"""reconnect_links: single-use reconnect and connect links

Revision ID: 0008_reconnect_links
Revises: 0007_worker
Create Date: 2026-12-03 00:00:00

A link lets the owner of an account run one OAuth flow without a vault account: a reconnect
link for a connection that needs reconnecting, a connect link for a new account with an
expected e-mail. Only the token's SHA-256 hash is stored.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0008_reconnect_links'
down_revision = '0007_worker'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('reconnect_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=True),
    sa.Column('expected_email', sa.String(length=320), nullable=True),
    sa.Column('created_by', sa.String(length=320), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=320), nullable=True),
    sa.CheckConstraint("kind IN ('reconnect', 'connect')", name=op.f('ck_reconnect_links_kind')),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'],
                            name=op.f('fk_reconnect_links_connection_id_connections'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'],
                            name=op.f('fk_reconnect_links_created_by_id_users'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reconnect_links')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_reconnect_links_token_hash'))
    )
    with op.batch_alter_table('reconnect_links', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_reconnect_links_connection_id'), ['connection_id'], unique=False
        )
        batch_op.create_index(batch_op.f('ix_reconnect_links_provider'), ['provider'], unique=False)


def downgrade():
    with op.batch_alter_table('reconnect_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reconnect_links_provider'))
        batch_op.drop_index(batch_op.f('ix_reconnect_links_connection_id'))

    op.drop_table('reconnect_links')

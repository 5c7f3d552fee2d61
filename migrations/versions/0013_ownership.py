"""ownership: connection owners, purpose and tags; consumers; service-key expiry and rotation

Revision ID: 0013_ownership
Revises: 0012_audit_chain
Create Date: 2026-12-03 13:12:09

Every connection gets an owner (an e-mail; existing connections: whoever connected them), a
purpose and tags (connection_tags). connection_consumers records which service key fetched
which connection's token and when last, so pages never scan the audit table. Service keys gain
tag restrictions, an expiry, their creator, and a rotation's previous secret with its overlap.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0013_ownership'
down_revision = '0012_audit_chain'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('connection_consumers',
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('service_key_id', sa.Integer(), nullable=False),
    sa.Column('first_fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], name=op.f('fk_connection_consumers_connection_id_connections'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['service_key_id'], ['service_keys.id'], name=op.f('fk_connection_consumers_service_key_id_service_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('connection_id', 'service_key_id', name=op.f('pk_connection_consumers'))
    )
    with op.batch_alter_table('connection_consumers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_connection_consumers_service_key_id_last_fetched_at'), ['service_key_id', 'last_fetched_at'], unique=False)

    op.create_table('connection_tags',
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('tag', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], name=op.f('fk_connection_tags_connection_id_connections'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('connection_id', 'tag', name=op.f('pk_connection_tags'))
    )
    with op.batch_alter_table('connection_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_connection_tags_tag_connection_id'), ['tag', 'connection_id'], unique=False)

    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner_email', sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column('purpose', sa.String(length=500), nullable=True))
        batch_op.create_index(batch_op.f('ix_connections_owner_email'), ['owner_email'], unique=False)

    with op.batch_alter_table('service_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allowed_tags', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('created_by', sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('previous_key_prefix', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('previous_key_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('previous_key_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_service_keys_previous_key_hash'), ['previous_key_hash'])

    # The default only fills existing rows; new keys get theirs from the model.
    with op.batch_alter_table('service_keys', schema=None) as batch_op:
        batch_op.alter_column('allowed_tags', server_default=None)

    # Existing connections are owned by whoever connected them, as new ones will be.
    op.execute(
        "UPDATE connections SET owner_email = ("
        "SELECT lower(users.email) FROM users WHERE users.id = connections.created_by_id) "
        "WHERE owner_email IS NULL AND created_by_id IS NOT NULL"
    )


def downgrade():
    with op.batch_alter_table('service_keys', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_service_keys_previous_key_hash'), type_='unique')
        batch_op.drop_column('previous_key_expires_at')
        batch_op.drop_column('previous_key_hash')
        batch_op.drop_column('previous_key_prefix')
        batch_op.drop_column('rotated_at')
        batch_op.drop_column('expires_at')
        batch_op.drop_column('created_by')
        batch_op.drop_column('allowed_tags')

    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connections_owner_email'))
        batch_op.drop_column('purpose')
        batch_op.drop_column('owner_email')

    with op.batch_alter_table('connection_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connection_tags_tag_connection_id'))

    op.drop_table('connection_tags')
    with op.batch_alter_table('connection_consumers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connection_consumers_service_key_id_last_fetched_at'))

    op.drop_table('connection_consumers')

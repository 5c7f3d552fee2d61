"""audit chain: seals on audit_events, the chain's state row, retention checkpoints, hourly hand-out counts

Revision ID: 0012_audit_chain
Revises: 0011_request_ids
Create Date: 2026-12-03 00:00:00

Audit rows are linked after they are written (vault/services/audit_chain.py): each sealed row
gets its place in the chain (chain_seq, unique), the MAC of its chain hash and the id of the
key that made the MAC.
Existing rows start unsealed; the first sealing run links them all, oldest first.
audit_handout_counts holds the running hours' counts when VAULT_AUDIT_HANDOUTS=hourly.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0012_audit_chain'
down_revision = '0011_request_ids'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('audit_chain_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('head_seq', sa.Integer(), nullable=False),
    sa.Column('head_id', sa.Integer(), nullable=True),
    sa.Column('head_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('sealed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('verified_ok', sa.Boolean(), nullable=True),
    sa.Column('verified_seq', sa.Integer(), nullable=True),
    sa.Column('verified_id', sa.Integer(), nullable=True),
    sa.Column('broken_id', sa.Integer(), nullable=True),
    sa.Column('problem', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_chain_state'))
    )
    op.create_table('audit_chain_checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('through_seq', sa.Integer(), nullable=False),
    sa.Column('through_id', sa.Integer(), nullable=False),
    sa.Column('through_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('deleted', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.String(length=8), nullable=False),
    sa.Column('mac', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_chain_checkpoints'))
    )
    with op.batch_alter_table('audit_chain_checkpoints', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_audit_chain_checkpoints_through_seq'), ['through_seq'], unique=False
        )

    op.create_table('audit_handout_counts',
    sa.Column('actor', sa.String(length=320), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('hour', sa.DateTime(timezone=True), nullable=False),
    sa.Column('target', sa.String(length=320), nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('actor', 'connection_id', 'hour', name=op.f('pk_audit_handout_counts'))
    )

    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chain_seq', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('chain_mac', sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column('chain_key_id', sa.String(length=8), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_audit_events_chain_seq'), ['chain_seq'])
        batch_op.create_index(
            'ix_audit_events_unsealed', ['id'], unique=False,
            postgresql_where=sa.text('chain_seq IS NULL'),
            sqlite_where=sa.text('chain_seq IS NULL'),
        )


def downgrade():
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_unsealed')
        batch_op.drop_constraint(batch_op.f('uq_audit_events_chain_seq'), type_='unique')
        batch_op.drop_column('chain_key_id')
        batch_op.drop_column('chain_mac')
        batch_op.drop_column('chain_seq')

    with op.batch_alter_table('audit_chain_checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_chain_checkpoints_through_seq'))

    op.drop_table('audit_handout_counts')
    op.drop_table('audit_chain_checkpoints')
    op.drop_table('audit_chain_state')

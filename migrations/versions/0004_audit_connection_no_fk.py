"""audit_events.connection_id: no foreign key

Revision ID: 0004_audit_connection_no_fk
Revises: 0003_dashboard_token_index
Create Date: 2026-11-29 23:55:00

Audit events are records, written once and never rewritten; connections are disconnected,
never deleted. The foreign key (ON DELETE SET NULL) could only ever have rewritten history,
and it made every token hand-out's audit INSERT take a KEY SHARE lock on the connection's
row: a WAL-logged row lock (a MultiXact when integrations fetch the same token at once).
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0004_audit_connection_no_fk'
down_revision = '0003_dashboard_token_index'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f('fk_audit_events_connection_id_connections'), type_='foreignkey'
        )


def downgrade():
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f('fk_audit_events_connection_id_connections'),
            'connections', ['connection_id'], ['id'], ondelete='SET NULL',
        )

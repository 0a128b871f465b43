"""Create spent_login_links: login links become single-use.

Reviewed from `flask db migrate` (autogenerate rendered the UTCDateTime decorator without
an import; the plain timezone-aware DateTime it stands for is written out here).

Revision ID: 0002_spent_login_links
Revises: 0001_create_escalations
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_spent_login_links"
down_revision = "0001_create_escalations"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "spent_login_links",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("founder_id", sa.String(length=255), nullable=False),
        sa.Column("spent_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_spent_login_links")),
    )
    op.create_index(op.f("ix_spent_login_links_spent_at"), "spent_login_links", ["spent_at"])


def downgrade():
    op.drop_index(op.f("ix_spent_login_links_spent_at"), table_name="spent_login_links")
    op.drop_table("spent_login_links")

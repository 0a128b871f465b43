"""Notifications (SPEC §11): the founders' settings, the deliveries owed to them with every
attempt, and the spent nonces of e-mail option links.

Reviewed from `flask db migrate` (UTCDateTime rendered as DateTime(timezone=True), the
partial index's WHERE clause written out for both dialects).

Revision ID: 0007_notifications
Revises: 0006_webhooks
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_notifications"
down_revision = "0006_webhooks"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OWED = sa.text("status IN ('pending', 'sending')")


def upgrade():
    op.create_table(
        "notification_settings",
        sa.Column("founder_id", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("email_mode", sa.String(length=10), nullable=False),
        sa.Column("slack_webhook_url", sa.Text(), nullable=True),
        sa.Column("slack_user_id", sa.String(length=64), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("quiet_start", sa.String(length=5), nullable=True),
        sa.Column("quiet_end", sa.String(length=5), nullable=True),
        sa.Column("digest_sent_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("founder_id", name=op.f("pk_notification_settings")),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("founder_id", sa.String(length=255), nullable=False),
        sa.Column("escalation_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("locked_until", TIMESTAMP, nullable=True),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_deliveries")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_notification_deliveries_due", "notification_deliveries", ["next_attempt_at"],
                    postgresql_where=OWED, sqlite_where=OWED)
    op.create_index("ix_notification_deliveries_founder_id_id", "notification_deliveries", ["founder_id", "id"])
    op.create_table(
        "notification_attempts",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", ROW_ID, nullable=False),
        sa.Column("attempted_at", TIMESTAMP, nullable=False),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("result", sa.String(length=20), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["delivery_id"], ["notification_deliveries.id"], ondelete="CASCADE",
                                name=op.f("fk_notification_attempts_delivery_id_notification_deliveries")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_attempts")),
    )
    op.create_index("ix_notification_attempts_delivery_id_id", "notification_attempts", ["delivery_id", "id"])
    op.create_table(
        "spent_mail_links",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("founder_id", sa.String(length=255), nullable=False),
        sa.Column("spent_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_spent_mail_links")),
    )
    op.create_index("ix_spent_mail_links_spent_at", "spent_mail_links", ["spent_at"])


def downgrade():
    op.drop_index("ix_spent_mail_links_spent_at", table_name="spent_mail_links")
    op.drop_table("spent_mail_links")
    op.drop_index("ix_notification_attempts_delivery_id_id", table_name="notification_attempts")
    op.drop_table("notification_attempts")
    op.drop_index("ix_notification_deliveries_founder_id_id", table_name="notification_deliveries")
    op.drop_index("ix_notification_deliveries_due", table_name="notification_deliveries")
    op.drop_table("notification_deliveries")
    op.drop_table("notification_settings")

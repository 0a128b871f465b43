"""Webhooks (SPEC §13): webhook_endpoints, webhook_deliveries, webhook_attempts, and the
trigger that owes every new event to every enabled endpoint that takes its type.

Events are stored by several statements (record_event, resolve's one-statement CTE on
PostgreSQL, the worker's bulk expiry), so the deliveries are created by the database
itself: AFTER INSERT ON job_events, one row per enabled endpoint whose `event_types` is
NULL (every type) or contains the event's type, in the transaction that stored the event.
A crash can lose neither without the other. Autogenerate does not see triggers: they are
written here by hand, for each dialect (a plpgsql function + trigger on PostgreSQL, a
CREATE TRIGGER … BEGIN … END on SQLite).

Reviewed from `flask db migrate` (UTCDateTime rendered without an import, the partial
index without its WHERE clause, the JSON variant and the trigger written out by hand).

Revision ID: 0006_webhooks
Revises: 0005_decision_memory
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006_webhooks"
down_revision = "0005_decision_memory"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
EVENT_TYPES = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql")
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PENDING_ONLY = sa.text("status = 'pending'")

# The delivery is due at the event's own time (so a worker with a test clock sees it due).
POSTGRES_FUNCTION = """
CREATE FUNCTION webhook_deliveries_for_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (endpoint_id, event_id, status, attempts, next_attempt_at, created_at)
    SELECT e.id, NEW.id, 'pending', 0, NEW.created_at, NEW.created_at
      FROM webhook_endpoints AS e
     WHERE e.enabled AND (e.event_types IS NULL OR e.event_types @> jsonb_build_array(NEW.type));
    RETURN NULL;
END
$$
"""
POSTGRES_TRIGGER = """
CREATE TRIGGER webhook_deliveries_for_event AFTER INSERT ON job_events
FOR EACH ROW EXECUTE FUNCTION webhook_deliveries_for_event()
"""
SQLITE_TRIGGER = """
CREATE TRIGGER webhook_deliveries_for_event AFTER INSERT ON job_events
BEGIN
    INSERT INTO webhook_deliveries (endpoint_id, event_id, status, attempts, next_attempt_at, created_at)
    SELECT e.id, NEW.id, 'pending', 0, NEW.created_at, NEW.created_at
      FROM webhook_endpoints AS e
     WHERE e.enabled = 1 AND (e.event_types IS NULL
           OR EXISTS (SELECT 1 FROM json_each(e.event_types) AS t WHERE t.value = NEW.type));
END
"""


def upgrade():
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", EVENT_TYPES, nullable=True),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("previous_secret", sa.String(length=100), nullable=True),
        sa.Column("previous_secret_expires_at", TIMESTAMP, nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_at", TIMESTAMP, nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("failing_since", TIMESTAMP, nullable=True),
        sa.Column("last_success_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("locked_until", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE",
                                name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"],
                    postgresql_where=PENDING_ONLY, sqlite_where=PENDING_ONLY)
    op.create_index("uq_webhook_deliveries_endpoint_id_event_id", "webhook_deliveries",
                    ["endpoint_id", "event_id"], unique=True)
    op.create_table(
        "webhook_attempts",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("attempted_at", TIMESTAMP, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_deliveries.id"], ondelete="CASCADE",
                                name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery_id_id", "webhook_attempts", ["delivery_id", "id"])

    if op.get_context().dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        op.execute(POSTGRES_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade():
    op.execute("DROP TRIGGER IF EXISTS webhook_deliveries_for_event" +
               (" ON job_events" if op.get_context().dialect.name == "postgresql" else ""))
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS webhook_deliveries_for_event()")
    op.drop_index("ix_webhook_attempts_delivery_id_id", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("uq_webhook_deliveries_endpoint_id_event_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")

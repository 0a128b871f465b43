"""The reviewed migrations: a clean round trip, and no drift from the models (SPEC §2)."""
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from conftest import make_app, migrate
from console.extensions import db


@pytest.fixture(params=["sqlite", "postgresql"])
def scratch_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
    else:
        scratch = request.getfixturevalue("postgres")
        url = scratch.create("console_migrations")
        yield url
        scratch.drop(url)


def tables(url: str) -> set[str]:
    app = make_app(url)
    with app.app_context():
        names = set(sa.inspect(db.engine).get_table_names())
        db.engine.dispose()
    return names - {"alembic_version"}


def columns(url: str, table: str) -> set[str]:
    app = make_app(url)
    with app.app_context():
        names = {column["name"] for column in sa.inspect(db.engine).get_columns(table)}
        db.engine.dispose()
    return names


WEBHOOK_TABLES = {"webhook_endpoints", "webhook_deliveries", "webhook_attempts"}
NOTIFICATION_TABLES = {"notification_settings", "notification_deliveries", "notification_attempts", "spent_mail_links"}
ALL_TABLES = ({"agent_escalations", "jobs", "job_events", "spent_login_links", "decision_rules", "console_sessions"}
              | WEBHOOK_TABLES
              | NOTIFICATION_TABLES)


def triggers(url: str) -> set[str]:
    """Triggers on job_events (autogenerate cannot see them, so the round trip checks them)."""
    app = make_app(url)
    with app.app_context():
        with db.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                query = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'job_events'::regclass AND NOT tgisinternal"
            else:
                query = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'job_events'"
            names = set(connection.execute(sa.text(query)).scalars())
        db.engine.dispose()
    return names


def event_id_default(url: str) -> str | None:
    """How job_events.id gets its value (autogenerate does not compare defaults)."""
    app = make_app(url)
    with app.app_context():
        [column] = [c for c in sa.inspect(db.engine).get_columns("job_events") if c["name"] == "id"]
        db.engine.dispose()
    return column["default"]


def test_upgrade_downgrade_upgrade_round_trip(scratch_url):
    postgres = scratch_url.startswith("postgresql")
    migrate(scratch_url)
    assert tables(scratch_url) == ALL_TABLES
    assert triggers(scratch_url) == {"webhook_deliveries_for_event"}
    assert event_id_default(scratch_url) == ("console_next_event_id()" if postgres else None)
    migrate(scratch_url, "-1", "downgrade")  # 0009 trust: console sessions
    assert tables(scratch_url) == ALL_TABLES - {"console_sessions"}
    assert event_id_default(scratch_url) == ("console_next_event_id()" if postgres else None)
    migrate(scratch_url, "-1", "downgrade")  # 0008 event ids in transaction order
    assert event_id_default(scratch_url) == ("nextval('job_events_id_seq'::regclass)" if postgres else None)
    assert tables(scratch_url) == ALL_TABLES - {"console_sessions"}
    migrate(scratch_url, "-1", "downgrade")  # 0007 notifications
    assert tables(scratch_url) == ALL_TABLES - NOTIFICATION_TABLES - {"console_sessions"}
    assert triggers(scratch_url) == {"webhook_deliveries_for_event"}
    before = ALL_TABLES - NOTIFICATION_TABLES - {"console_sessions"}
    migrate(scratch_url, "-1", "downgrade")  # 0006 webhooks
    assert tables(scratch_url) == before - WEBHOOK_TABLES and triggers(scratch_url) == set()
    migrate(scratch_url, "-1", "downgrade")  # 0005 decision memory
    assert tables(scratch_url) == before - WEBHOOK_TABLES - {"decision_rules"}
    assert "rule_id" not in columns(scratch_url, "agent_escalations")
    assert "expires_at" in columns(scratch_url, "agent_escalations")
    migrate(scratch_url, "-1", "downgrade")  # 0004 expiry and audit
    base_tables = before - WEBHOOK_TABLES - {"decision_rules"}
    assert tables(scratch_url) == base_tables and "expires_at" not in columns(scratch_url, "agent_escalations")
    assert "founder_id" in columns(scratch_url, "job_events")
    migrate(scratch_url, "-1", "downgrade")
    assert tables(scratch_url) == base_tables and "founder_id" not in columns(scratch_url, "job_events")
    migrate(scratch_url, "-1", "downgrade")
    assert tables(scratch_url) == base_tables - {"spent_login_links"}
    migrate(scratch_url, "base", "downgrade")
    assert tables(scratch_url) == set()
    migrate(scratch_url)
    assert tables(scratch_url) == ALL_TABLES and triggers(scratch_url) == {"webhook_deliveries_for_event"}
    assert event_id_default(scratch_url) == ("console_next_event_id()" if postgres else None)


def test_models_and_migrations_do_not_drift(scratch_url):
    migrate(scratch_url)
    app = make_app(scratch_url)
    with app.app_context():
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, db.metadata) == []
            indexes = {ix["name"]: ix for ix in sa.inspect(connection).get_indexes("agent_escalations")}
        db.engine.dispose()
    pending_unique = indexes["uq_agent_escalations_pending_job_id_error_signature"]
    assert pending_unique["unique"] and pending_unique["column_names"] == ["job_id", "error_signature"]
    for column in ("session_id", "project_id", "error_signature"):
        assert indexes[f"ix_agent_escalations_{column}"]["column_names"] == [column]
    assert indexes["ix_agent_escalations_job_id_created_at"]["column_names"][0] == "job_id"
    assert indexes["ix_agent_escalations_founder_id_status_created_at"]["column_names"][0] == "founder_id"


def test_postgresql_uses_native_uuid_jsonb_and_timestamptz(postgres):
    url = postgres.create("console_types")
    try:
        migrate(url)
        app = make_app(url)
        with app.app_context():
            columns = {c["name"]: c["type"] for c in sa.inspect(db.engine).get_columns("agent_escalations")}
            db.session.remove()
            db.engine.dispose()
        assert type(columns["id"]).__name__ == "UUID"
        assert type(columns["options"]).__name__ == "JSONB" and type(columns["attempts_summary"]).__name__ == "JSONB"
        assert columns["created_at"].timezone is True
    finally:
        postgres.drop(url)

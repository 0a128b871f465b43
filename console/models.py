"""The persistence model: escalations, the jobs they belong to, and the job event log."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text, TypeDecorator, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db

# Flask-SQLAlchemy 3.1 refuses type_annotation_map on its base, so the variant is explicit.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")
# INTEGER PRIMARY KEY is SQLite's rowid; BIGINT would not autoincrement there.
EventId = BigInteger().with_variant(Integer(), "sqlite")

PENDING, RESOLVED, SKIPPED, EXPIRED = "pending", "resolved", "skipped", "expired"
STATUSES = (PENDING, RESOLVED, SKIPPED, EXPIRED)

# Who settled an escalation (decided_by) and through what (decided_via, when a person did).
BY_FOUNDER, BY_RULE, BY_EXPIRY, BY_AGENT = "founder", "rule", "expiry", "agent"
VIA_API, VIA_CONSOLE, VIA_SLACK = "api", "console", "slack"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """timestamptz on PostgreSQL; on SQLite (which has no time zones) stored as UTC and
    handed back timezone-aware, so every timestamp leaves the app with an offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def escalation_option(escalation: Any, value: str | None) -> dict[str, Any] | None:
    """The option of an escalation (a model instance or a row of its table) with this value."""
    return next((o for o in escalation.options or [] if o.get("value") == value), None)


class AgentEscalation(db.Model):
    """One question an agent asked its founder (SPEC §2)."""

    __tablename__ = "agent_escalations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    session_id: Mapped[str] = mapped_column(String(255), index=True)
    job_id: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    founder_id: Mapped[str] = mapped_column(String(255))
    error_type: Mapped[str] = mapped_column(String(255))
    error_signature: Mapped[str] = mapped_column(String(255), index=True)
    plain_english_problem: Mapped[str] = mapped_column(Text)
    attempts_summary: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    recommended_action: Mapped[str] = mapped_column(Text)
    options: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument, default=list)
    status: Mapped[str] = mapped_column(String(50), default=PENDING)
    founder_decision: Mapped[str | None] = mapped_column(String(255))
    founder_guidance: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Expiry (SPEC §10): the deadline, the option applied then, and the reminder at 3/4 of it.
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    on_expiry: Mapped[str | None] = mapped_column(String(255))
    reminder_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reminded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Audit (SPEC §10): founder | rule | expiry | agent, and api | console | slack.
    decided_by: Mapped[str | None] = mapped_column(String(20))
    decided_via: Mapped[str | None] = mapped_column(String(20))

    __table_args__ = (
        # A job's cards, newest first; the founder's inbox, with and without a status filter.
        Index("ix_agent_escalations_job_id_created_at", "job_id", "created_at"),
        Index("ix_agent_escalations_founder_id_created_at", "founder_id", "created_at", "id"),
        Index("ix_agent_escalations_founder_id_status_created_at", "founder_id", "status", "created_at", "id"),
        # At most one open question per job and error: enforced by the database.
        Index(
            "uq_agent_escalations_pending_job_id_error_signature",
            "job_id",
            "error_signature",
            unique=True,
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # The worker's sweeps (console/worker.py) read only what is due, cheaply at any size.
        Index("ix_agent_escalations_pending_expires_at", "expires_at",
              postgresql_where=text("status = 'pending' AND expires_at IS NOT NULL"),
              sqlite_where=text("status = 'pending' AND expires_at IS NOT NULL")),
        Index("ix_agent_escalations_pending_reminder_at", "reminder_at",
              postgresql_where=text("status = 'pending' AND reminder_at IS NOT NULL AND reminded_at IS NULL"),
              sqlite_where=text("status = 'pending' AND reminder_at IS NOT NULL AND reminded_at IS NULL")),
    )

    def __init__(self, **kwargs: Any) -> None:
        # Column defaults apply at flush; an unflushed object must already look pending.
        kwargs.setdefault("status", PENDING)
        kwargs.setdefault("attempts_summary", [])
        kwargs.setdefault("options", [])
        kwargs.setdefault("occurrences", 1)
        super().__init__(**kwargs)

    def option(self, value: str | None) -> dict[str, Any] | None:
        return escalation_option(self, value)

    def __repr__(self) -> str:
        return f"<AgentEscalation {self.id} {self.status} job={self.job_id}>"


class Job(db.Model):
    """Who owns a job: set by the first escalation or event that names it (SPEC §4)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    founder_id: Mapped[str] = mapped_column(String(255), index=True)
    project_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobEvent(db.Model):
    """The append-only event log. `id` is the SSE id: ids become visible in order (see events.py)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(255))
    founder_id: Mapped[str] = mapped_column(String(255))  # the job's founder (their stream reads one range)
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_job_events_job_id_id", "job_id", "id"),
        Index("ix_job_events_founder_id_id", "founder_id", "id"),
        {"sqlite_autoincrement": True},  # never reuse an id, even of a deleted last row
    )

    def envelope(self) -> dict[str, Any]:
        return event_envelope(self)


def event_envelope(event: Any) -> dict[str, Any]:
    """The flat JSON clients route on `type` (SPEC §3), of a job_events row (or instance)."""
    return {
        **event.payload,
        "id": event.id,
        "type": event.type,
        "job_id": event.job_id,
        "timestamp": event.created_at.isoformat(),
    }


class SpentLoginLink(db.Model):
    """A login link that has signed someone in. Links are single-use: the nonce of a link
    is stored when it is spent, and a second use finds it here (SPEC §4)."""

    __tablename__ = "spent_login_links"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    founder_id: Mapped[str] = mapped_column(String(255))
    spent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

"""The persistence model: escalations, the jobs they belong to, and the job event log."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, TypeDecorator, Uuid, text,
)
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
VIA_API, VIA_CONSOLE, VIA_EMAIL, VIA_SLACK = "api", "console", "email", "slack"


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
    # Decision memory (SPEC §12): the founder's rule that answered it, when one did.
    rule_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

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
        # Decision memory: the founder's latest decision on a project's error, in any job.
        Index("ix_agent_escalations_memory", "founder_id", "project_id", "error_signature", "resolved_at",
              postgresql_where=text("status = 'resolved' AND decided_by = 'founder'"),
              sqlite_where=text("status = 'resolved' AND decided_by = 'founder'")),
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


class ConsoleSession(db.Model):
    """A signed-in console session (SPEC §16): the cookie names it, and it counts only while
    this row says so, so signing out ends it on the server too and "Sign out everywhere" ends
    every session of the founder. The id is a SHA-256 of the cookie's random value."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    founder_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_console_sessions_founder_id", "founder_id"),
        Index("ix_console_sessions_expires_at", "expires_at"),
    )


class DecisionRule(db.Model):
    """"Answer this error the same way from now on, in this project" (SPEC §12): a later
    escalation of the founder with the same project and error signature is settled at once
    with this decision and guidance. One rule per key; a newer one replaces it."""

    __tablename__ = "decision_rules"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    founder_id: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    error_type: Mapped[str] = mapped_column(String(255))
    error_signature: Mapped[str] = mapped_column(String(255))
    decision: Mapped[str] = mapped_column(String(255))
    label: Mapped[str | None] = mapped_column(Text)  # the option's label when the rule was made
    guidance: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_from: Mapped[uuid.UUID] = mapped_column(Uuid)  # the escalation whose decision it remembers
    times_applied: Mapped[int] = mapped_column(Integer, default=0)
    last_applied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("uq_decision_rules_founder_id_project_id_error_signature", "founder_id", "project_id",
              "error_signature", unique=True),
        Index("ix_decision_rules_founder_id_created_at", "founder_id", "created_at"),
    )


# --- webhooks (SPEC §13) ----------------------------------------------------------------------------

# A delivery is pending (due at next_attempt_at; in flight while a worker's lease runs), then
# delivered, failed (the retry schedule ran out) or cancelled (its endpoint was disabled).
DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_FAILED, DELIVERY_CANCELLED = "pending", "delivered", "failed", "cancelled"
# SQL NULL (never JSON null) means "every event type": the trigger that fans events out tests IS NULL.
EventTypeList = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class WebhookEndpoint(db.Model):
    """Where the main product hears events: an operator's URL (`flask --app console webhook add`)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str] | None] = mapped_column(EventTypeList)  # None: every type
    secret: Mapped[str] = mapped_column(String(100))  # whsec_…; kept to sign with (HMAC needs the key)
    # After a rotation the old secret signs too, until previous_secret_expires_at (24 h).
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    failing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # first failure since the last success
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = ({"sqlite_autoincrement": True},)  # a removed endpoint's id is never handed out again


class WebhookDelivery(db.Model):
    """One event owed to one endpoint. Rows are inserted by a trigger on job_events (migration
    0005), in the transaction that stored the event, whichever statement stored it."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(BigInteger)  # job_events.id (the log is append-only)
    status: Mapped[str] = mapped_column(String(20), default=DELIVERY_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # since it was (re)queued
    # When it is due; while a worker holds it, the end of that worker's lease (so a worker that
    # died makes it due again by itself).
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # in flight until (the lease)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # The worker's claim reads only due, undelivered rows, cheaply at any size.
        Index("ix_webhook_deliveries_due", "next_attempt_at",
              postgresql_where=text("status = 'pending'"), sqlite_where=text("status = 'pending'")),
        Index("uq_webhook_deliveries_endpoint_id_event_id", "endpoint_id", "event_id", unique=True),
        {"sqlite_autoincrement": True},
    )


class WebhookAttempt(db.Model):
    """One POST of a delivery and what came of it (SPEC §9: every attempt is recorded)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)  # the receiver's HTTP status, when it answered
    error: Mapped[str | None] = mapped_column(Text)  # why it failed, shortened
    response_body: Mapped[str | None] = mapped_column(Text)  # at most 500 characters of it
    duration_ms: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_webhook_attempts_delivery_id_id", "delivery_id", "id"),)


# --- notifications (SPEC §11; console/services/notifications.py, console/notifications.py) ----------

EMAIL_EACH, EMAIL_DIGEST, EMAIL_OFF = "each", "digest", "off"
EMAIL_MODES = (EMAIL_EACH, EMAIL_DIGEST, EMAIL_OFF)
CHANNEL_EMAIL, CHANNEL_SLACK = "email", "slack"
# What a delivery is about: a new question, its reminder (SPEC §10), or the update of a Slack
# message after a button answered it (posted to the interaction's response_url).
KIND_QUESTION, KIND_REMINDER, KIND_SLACK_UPDATE = "question", "reminder", "slack_update"
# pending: due at next_attempt_at (held by a worker while locked_until runs); sending: past the
# point of no return (the SMTP DATA, the POST) — a worker that dies there leaves it so, and it is
# never sent again blindly (`unknown`); then sent, failed (permanent, or out of retries) or
# skipped (not sent on purpose: answered meanwhile, channel turned off).
NOTIFY_PENDING, NOTIFY_SENDING, NOTIFY_SENT = "pending", "sending", "sent"
NOTIFY_FAILED, NOTIFY_SKIPPED, NOTIFY_UNKNOWN = "failed", "skipped", "unknown"


class NotificationSettings(db.Model):
    """Where and when a founder is told about new questions. No row: the defaults (nothing is sent)."""

    __tablename__ = "notification_settings"

    founder_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(254))
    email_mode: Mapped[str] = mapped_column(String(10), default=EMAIL_EACH)
    slack_webhook_url: Mapped[str | None] = mapped_column(Text)
    slack_user_id: Mapped[str | None] = mapped_column(String(64))  # who may answer from Slack's buttons
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    quiet_start: Mapped[str | None] = mapped_column(String(5))  # local "HH:MM"; both or neither
    quiet_end: Mapped[str | None] = mapped_column(String(5))
    digest_sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # the last digest (one an hour)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationDelivery(db.Model):
    """One message owed to one founder on one channel, stored by the transaction that made it
    due (the create of the escalation, the reminder's sweep)."""

    __tablename__ = "notification_deliveries"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    founder_id: Mapped[str] = mapped_column(String(255))
    escalation_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    kind: Mapped[str] = mapped_column(String(20))
    channel: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20), default=NOTIFY_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # while held: the end of the lease
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    target: Mapped[str | None] = mapped_column(Text)  # a Slack response_url (slack_update); else the settings say
    outcome: Mapped[str | None] = mapped_column(Text)  # the latest outcome, shortened (the settings page)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_notification_deliveries_due", "next_attempt_at",
              postgresql_where=text("status IN ('pending', 'sending')"),
              sqlite_where=text("status IN ('pending', 'sending')")),
        Index("ix_notification_deliveries_founder_id_id", "founder_id", "id"),
        # what was sent to a founder on a channel in the last hour (the hourly cap, SPEC §16)
        Index("ix_notification_deliveries_founder_id_channel_sent_at", "founder_id", "channel", "sent_at"),
        {"sqlite_autoincrement": True},
    )


class NotificationAttempt(db.Model):
    """One try of a delivery: when, to where, and what came of it (SPEC §9)."""

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("notification_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    target: Mapped[str | None] = mapped_column(Text)  # the address, or the URL without its secret part
    status_code: Mapped[int | None] = mapped_column(Integer)  # the SMTP reply code or HTTP status
    result: Mapped[str] = mapped_column(String(20))  # sent | retry | failed | unknown
    outcome: Mapped[str | None] = mapped_column(Text)  # the server's answer or the error, shortened

    __table_args__ = (Index("ix_notification_attempts_delivery_id_id", "delivery_id", "id"),)


class SpentMailLink(db.Model):
    """An e-mail's option link that has signed someone in (single-use, like SpentLoginLink, but
    kept for the links' 7 days)."""

    __tablename__ = "spent_mail_links"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    founder_id: Mapped[str] = mapped_column(String(255))
    spent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

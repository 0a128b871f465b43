"""The job event vocabulary and the append-only event log.

Every event is stored in the same transaction as the change that caused it, then fanned
out (see `console.realtime`). Event ids become visible in id order: on PostgreSQL the
event-writing transactions take one transaction-level advisory lock right before they
insert their event, so the sequence hands out ids in commit order and a reader that has
seen id N never later finds a smaller one. On SQLite the database lock already
serialises writers.
"""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import event as sa_event, insert, select, text
from sqlalchemy.orm import Session

from .extensions import db
from .models import JobEvent, utcnow


class SSEEventType:
    """Event types of the job stream (SPEC §3)."""

    BUILD_STAGE_STARTED = "build.stage.started"
    BUILD_STAGE_COMPLETED = "build.stage.completed"
    SNAPSHOT_UPDATED = "snapshot.updated"
    DOCUMENTATION_UPDATED = "documentation.updated"
    AGENT_SLEEPING = "agent.sleeping"
    AGENT_WAKING = "agent.waking"
    AGENT_BUDGET_EXCEEDED = "agent.budget_exceeded"
    AGENT_BUDGET_UPDATED = "agent.budget_updated"
    AGENT_WAITING_FOR_INPUT = "agent.waiting_for_input"
    AGENT_RETRYING = "agent.retrying"
    AGENT_ESCALATION_RESOLVED = "agent.escalation_resolved"
    AGENT_BUILD_PAUSED = "agent.build_paused"
    AGENT_THINKING = "agent.thinking"
    AGENT_TOOL_CALLED = "agent.tool.called"
    GSD_PHASE_STARTED = "gsd.phase.started"
    GSD_PHASE_COMPLETED = "gsd.phase.completed"

    @classmethod
    def values(cls) -> frozenset[str]:
        return frozenset(v for k, v in vars(cls).items() if k.isupper())


# Emitted only by the server, as a consequence of create / resolve / skip.
SERVER_OWNED_EVENT_TYPES = frozenset({SSEEventType.AGENT_WAITING_FOR_INPUT, SSEEventType.AGENT_ESCALATION_RESOLVED})
AGENT_EVENT_TYPES = SSEEventType.values() - SERVER_OWNED_EVENT_TYPES
# Keys of the envelope that a payload may not set.
ENVELOPE_KEYS = frozenset({"id", "type", "job_id", "timestamp"})

NOTIFY_CHANNEL = "console_job_events"
_EVENT_LOG_LOCK_KEY = 0x6573_6361_6C61  # "escala": the advisory lock that orders event ids


def record_event(job_id: str, founder_id: str, event_type: str, payload: dict[str, Any]) -> JobEvent:
    """Append an event of the founder's job inside the caller's (write) transaction; it
    becomes visible, and subscribers are woken, when that transaction commits."""
    session = db.session
    created_at = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        # One round trip: take the ordering lock (held until commit, so ids are handed out
        # and made visible one transaction at a time), insert, and queue the NOTIFY that
        # PostgreSQL delivers at commit to every LISTENing process (never on rollback).
        event_id = session.execute(_INSERT_EVENT_POSTGRES, {
            "key": _EVENT_LOG_LOCK_KEY, "job_id": job_id, "type": event_type, "payload": json.dumps(payload),
            "created_at": created_at, "channel": NOTIFY_CHANNEL, "founder_id": founder_id,
        }).scalar_one()
    else:
        event_id = session.execute(
            insert(JobEvent.__table__).values(job_id=job_id, type=event_type, payload=payload, created_at=created_at)
            .returning(JobEvent.__table__.c.id)
        ).scalar_one()
    session.info.setdefault("committed_events", []).append((event_id, job_id, founder_id))
    return JobEvent(id=event_id, job_id=job_id, type=event_type, payload=payload, created_at=created_at)


_INSERT_EVENT_POSTGRES = text("""
    WITH ordering AS (SELECT pg_advisory_xact_lock(:key))
    INSERT INTO job_events (job_id, type, payload, created_at)
    SELECT :job_id, :type, CAST(:payload AS JSONB), :created_at FROM ordering
    RETURNING id, pg_notify(:channel, json_build_array(id, job_id, CAST(:founder_id AS TEXT))::text)
""")


def list_events(job_id: str, after: int, limit: int) -> list[JobEvent]:
    query = (select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
             .order_by(JobEvent.id).limit(limit))
    return list(db.session.scalars(query))


# In-process fan-out after commit: the hub wakes this process's waiters at once (on
# PostgreSQL, NOTIFY reaches the other processes).
_commit_listeners: list = []


def on_events_committed(listener) -> None:
    """Register listener(list[(event_id, job_id, founder_id)]), called after a commit that stored events."""
    _commit_listeners.append(listener)


@sa_event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    committed = session.info.pop("committed_events", None)
    if committed:
        for listener in _commit_listeners:
            listener(committed)


@sa_event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("committed_events", None)

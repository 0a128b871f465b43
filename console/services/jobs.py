"""Jobs: who owns one, and its event log (post, list) — every rule about them is here."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..auth import Principal
from ..database import write_transaction
from ..errors import Conflict
from ..events import list_events, record_event
from ..extensions import db
from ..models import Job, JobEvent, utcnow


def dialect_insert(model):
    """INSERT with ON CONFLICT support for the database in use."""
    return (pg_insert if db.session.get_bind().dialect.name == "postgresql" else sqlite_insert)(model)


def claim_job(job_id: str, founder_id: str, project_id: str | None) -> None:
    """Inside a write transaction: record the job's founder on first sight, and refuse a
    second founder for it (a job has exactly one)."""
    db.session.execute(
        dialect_insert(Job)
        .values(id=job_id, founder_id=founder_id, project_id=project_id, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["id"])
    )
    owner = db.session.execute(select(Job.founder_id).where(Job.id == job_id)).scalar_one()
    if owner != founder_id:
        raise Conflict(f"Job {job_id!r} belongs to another founder; a job has exactly one founder.")


def job_visible_to(job_id: str, principal: Principal) -> bool:
    """Agents see every job; a founder sees the jobs they own. Unknown jobs are invisible."""
    if principal.is_agent:
        return True
    owner = db.session.execute(select(Job.founder_id).where(Job.id == job_id)).scalar_one_or_none()
    return owner is not None and owner == principal.founder_id


def post_job_event(job_id: str, event_type: str, founder_id: str, project_id: str | None,
                   payload: dict[str, Any]) -> JobEvent:
    """An agent-posted event (type already checked against the vocabulary)."""
    if project_id is not None:
        payload = {**payload, "project_id": project_id}
    with write_transaction():
        claim_job(job_id, founder_id, project_id)
        event = record_event(job_id, founder_id, event_type, payload)
    return event


def list_job_events(job_id: str, principal: Principal, after: int, limit: int) -> list[JobEvent]:
    if not job_visible_to(job_id, principal):
        return []
    return list_events(job_id, after, limit)

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


# A job's founder never changes once stored, so each process remembers the owners it has
# read (committed rows only): most writes to a known job then skip the ownership queries.
_known_owners: dict[str, str] = {}
_KNOWN_OWNERS_MAX = 50_000


def _remember_owner(job_id: str, founder_id: str) -> None:
    if len(_known_owners) >= _KNOWN_OWNERS_MAX:
        _known_owners.clear()
    _known_owners[job_id] = founder_id


def claim_job(job_id: str, founder_id: str, project_id: str | None) -> None:
    """Inside a write transaction: record the job's founder on first sight, and refuse a
    second founder for it (a job has exactly one)."""
    owner = _known_owners.get(job_id)
    if owner is None:
        inserted = db.session.execute(
            dialect_insert(Job)
            .values(id=job_id, founder_id=founder_id, project_id=project_id, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(Job.founder_id)
        ).scalar_one_or_none()
        if inserted is not None:
            return  # ours now (remembered once another request reads it back committed)
        owner = db.session.execute(select(Job.founder_id).where(Job.id == job_id)).scalar_one()
        _remember_owner(job_id, owner)
    if owner != founder_id:
        raise Conflict(f"Job {job_id!r} belongs to another founder; a job has exactly one founder.")


def job_visible_to(job_id: str, principal: Principal) -> bool:
    """Agents see every job; a founder sees the jobs they own. Unknown jobs are invisible."""
    if principal.is_agent:
        return True
    owner = _known_owners.get(job_id)
    if owner is None:
        owner = db.session.execute(select(Job.founder_id).where(Job.id == job_id)).scalar_one_or_none()
        if owner is not None:
            _remember_owner(job_id, owner)
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

"""Jobs: who owns one, and its event log (post, list) — every rule about them is here."""
from __future__ import annotations

from typing import Any

from cachetools import LRUCache
from sqlalchemy import Row, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..auth import AGENT, Principal
from ..caches import LockedCache, app_cache
from ..database import write_transaction
from ..errors import Conflict, FieldError, ValidationFailed
from ..database import read_rows
from ..events import JOB_EVENTS, StoredEvent, list_events, record_event
from ..extensions import db
from ..models import Job, utcnow
from ..schemas import UNSAFE_IN_IDENTIFIERS_WORDS, is_identifier


def dialect_insert(model):
    """INSERT with ON CONFLICT support for the database in use."""
    return (pg_insert if db.session.get_bind().dialect.name == "postgresql" else sqlite_insert)(model)


# A job's founder never changes once stored, nor its project once set, so each app remembers
# the (founder, project) of the jobs it has read (committed rows only): most writes to a known
# job then skip the ownership queries.
_KNOWN_OWNERS_MAX = 50_000


def _known_owners() -> LockedCache:
    """This app's remembered (founder, project) of jobs (bounded: the least recently used are forgotten)."""
    return app_cache("console_known_job_owners", lambda: LRUCache(maxsize=_KNOWN_OWNERS_MAX))


def _read_job(job_id: str) -> tuple[str, str | None] | None:
    """The stored (founder, project) of a job (None for an unknown job), remembered once read."""
    row = db.session.execute(select(Job.founder_id, Job.project_id).where(Job.id == job_id)).first()
    if row is None:
        return None
    _known_owners()[job_id] = (row.founder_id, row.project_id)
    return row.founder_id, row.project_id


def _job_owner(job_id: str) -> str | None:
    known = _known_owners().get(job_id) or _read_job(job_id)
    return known[0] if known else None


MAX_JOB_ID = 255


def possible_job_id(job_id: str) -> bool:
    """Could a job have this id? Other ids find nothing, without asking the database (which
    refuses NUL on PostgreSQL)."""
    return is_identifier(job_id, MAX_JOB_ID)


def check_job_id(job_id: str) -> None:
    if not possible_job_id(job_id):
        raise ValidationFailed([FieldError(
            "job_id", f"must be 1-{MAX_JOB_ID} characters, without {UNSAFE_IN_IDENTIFIERS_WORDS}")])


def claim_job(job_id: str, founder_id: str, project_id: str | None) -> None:
    """Inside a write transaction: record the job's founder (and project) on first sight, and
    refuse a second founder or a second project for it (a job has exactly one of each: SPEC
    §4, §16). A job first seen without a project takes the first one named."""
    known = _known_owners().get(job_id)
    if known is None or (project_id is not None and known[1] is None):
        inserted = db.session.execute(
            dialect_insert(Job)
            .values(id=job_id, founder_id=founder_id, project_id=project_id, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(Job.founder_id)
        ).scalar_one_or_none()
        if inserted is not None:
            return  # ours now (remembered once another request reads it back committed)
        known = _read_job(job_id)  # another founder's, or ours from a concurrent first claim
    owner, project = known
    if owner != founder_id:
        raise Conflict(f"Job {job_id!r} belongs to another founder; a job has exactly one founder.")
    if project_id is None or project == project_id:
        return
    if project is None:  # the first project named for this job fixes it
        fixed = db.session.execute(
            update(Job).where(Job.id == job_id, Job.project_id.is_(None)).values(project_id=project_id)
            .returning(Job.project_id)).scalar_one_or_none()
        if fixed is not None:
            return
        project = (_read_job(job_id) or (owner, None))[1]  # a concurrent claim fixed it first
        if project == project_id:
            return
    raise Conflict(f"Job {job_id!r} belongs to project {project!r}; a job has exactly one project, "
                   f"so it cannot take an escalation or event of project {project_id!r}.")


def job_visible_to(job_id: str, principal: Principal) -> bool:
    """The orchestrator sees every job; a scoped agent its own job (if its founder owns it);
    a founder the jobs they own (`Principal.sees`). Unknown jobs are invisible (to agents
    too: the stream of an unknown job is 404, SPEC §6)."""
    if not possible_job_id(job_id) or not principal.sees_job(job_id):
        return False
    owner = _job_owner(job_id)
    return owner is not None and principal.sees(owner, job_id)


def post_job_event(job_id: str, event_type: str, founder_id: str, project_id: str | None,
                   payload: dict[str, Any], *, principal: Principal = AGENT) -> StoredEvent:
    """An agent-posted event (type already checked against the vocabulary). A job-scoped
    agent may post only in its job, for its founder (Forbidden otherwise)."""
    principal.check_may_write(job_id, founder_id)
    principal.check_may_use_project(project_id)
    check_job_id(job_id)
    if project_id is not None:
        payload = {**payload, "project_id": project_id}
    with write_transaction():
        claim_job(job_id, founder_id, project_id)
        event = record_event(job_id, founder_id, event_type, payload)
    return event


def recent_job_events(job_id: str, principal: Principal, limit: int) -> list[Row]:
    """The job's last `limit` events, oldest first (the console's timeline)."""
    if not job_visible_to(job_id, principal):
        return []
    query = select(JOB_EVENTS).where(JOB_EVENTS.c.job_id == job_id).order_by(JOB_EVENTS.c.id.desc()).limit(limit)
    return list(reversed(read_rows(query)))


def list_job_events(job_id: str, principal: Principal, after: int, limit: int) -> list[Row]:
    if not job_visible_to(job_id, principal):
        return []
    return list_events(job_id, after, limit)

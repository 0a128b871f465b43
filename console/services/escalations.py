"""The escalation lifecycle: create, read, list, resolve, skip. Every rule lives here; the
JSON API and the console are two thin faces of these functions.

A service never reads the request: callers pass who is acting (a Principal or a founder
id) and validated input.

Services hand out an escalation as an `Escalation`: a read-only row of `agent_escalations`
whose attributes are those of the `AgentEscalation` model. Every read and every write is
one Core statement (a write with RETURNING), so no ORM instance is ever loaded: the
identity map and instance state cost more than the query itself on the hot reads
(`bench/README.md`, "What closed the gap"), and nothing outside this module changes an
escalation anyway.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import uuid
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import (
    JSON, BigInteger, ColumnElement, Row, Select, bindparam, column, func, literal_column, select, text, tuple_, update,
)

from ..auth import AGENT, Principal
from ..database import fetch_one, read_rows, read_text_rows, write_transaction
from ..errors import Conflict, FieldError, NotFound, TooManyRequests, ValidationFailed
from ..events import NOTIFY_CHANNEL, SSEEventType, announce, record_event
from ..extensions import db
from ..models import (
    BY_AGENT, BY_EXPIRY, BY_FOUNDER, BY_RULE, EXPIRED, PENDING, RESOLVED, SKIPPED, VIA_API, AgentEscalation, escalation_option,
    utcnow,
)
from ..schemas import EscalationCreate, escalation_json_bytes, escalation_list_json_bytes
from ..signatures import error_signature
from . import json_reads, memory, notifications
from .jobs import check_job_id, claim_job, dialect_insert, possible_job_id

PROVIDE_GUIDANCE = "provide_guidance"  # the conventional option whose answer is the guidance itself

ESCALATIONS = AgentEscalation.__table__
Escalation = Row  # one agent_escalations row, as services return it (see the module's doc)


# --- create ----------------------------------------------------------------------------------

def create_escalation(job_id: str, data: EscalationCreate, *,
                      principal: Principal = AGENT) -> tuple[Escalation, bool]:
    """Open an escalation, or count another occurrence of the pending one with the same
    job and error signature. Returns (escalation, created). Race-safe: concurrent identical
    creates collapse into one row by the partial unique index. A job-scoped agent may
    create only in its job, for its founder (Forbidden otherwise)."""
    principal.check_may_write(job_id, data.founder_id)
    principal.check_may_use_project(data.project_id)
    check_job_id(job_id)
    signature = data.error_signature
    if signature is None:
        signature = error_signature(data.project_id, data.error_type, data.error_message or "")
    options = [option.model_dump(exclude_none=True) for option in data.options]
    now = utcnow()
    deadline = _deadline(data, options, now)
    new_id = uuid.uuid4()
    upsert = (
        dialect_insert(ESCALATIONS)
        .values(
            id=new_id, session_id=data.session_id, job_id=job_id, project_id=data.project_id,
            founder_id=data.founder_id, error_type=data.error_type, error_signature=signature,
            plain_english_problem=data.plain_english_problem, recommended_action=data.recommended_action,
            attempts_summary=list(data.attempts_summary), options=options,
            status=PENDING, occurrences=1, created_at=now, last_seen_at=now, **deadline,
        )
        .on_conflict_do_update(
            index_elements=["job_id", "error_signature"],
            index_where=text("status = 'pending'"),
            set_={"occurrences": ESCALATIONS.c.occurrences + 1, "last_seen_at": now},
        )
        .returning(*ESCALATIONS.c, memory.previous_decision_column(), memory.rule_exists_returning())
    )
    with write_transaction():
        claim_job(job_id, data.founder_id, data.project_id)
        _check_room_in_job(job_id, signature)
        escalation = db.session.execute(upsert).one()
        created = escalation.id == new_id
        if created:
            record_event(job_id, escalation.founder_id, SSEEventType.AGENT_WAITING_FOR_INPUT, {
                "escalation_id": str(escalation.id),
                "project_id": escalation.project_id,
                "error_type": escalation.error_type,
                "plain_english_problem": escalation.plain_english_problem,
            })
            rule = memory.matching_rule(escalation.founder_id, escalation.project_id, escalation.error_signature) \
                if escalation.rule_exists else None
            if rule is not None and memory.rule_applies(rule, escalation):
                escalation = _settle_by_rule(escalation, rule, now)
            if escalation.status == PENDING:  # a rule's answer is never notified (SPEC §11)
                notifications.enqueue_question(escalation, now)
    return escalation, created


_PENDING_IN_JOB = text("SELECT count(*) FROM agent_escalations WHERE job_id = :job_id AND status = 'pending'")
_PENDING_TWIN = text("SELECT 1 FROM agent_escalations WHERE job_id = :job_id AND error_signature = :signature "
                     "AND status = 'pending'")
_LOCK_JOB = text("SELECT 1 FROM jobs WHERE id = :job_id FOR UPDATE")
ROOM_RETRY_AFTER = 60  # seconds: a founder answers, or the agent withdraws a question


def _check_room_in_job(job_id: str, signature: str) -> None:
    """Inside the create's transaction: at most CONSOLE_MAX_PENDING_PER_JOB pending questions
    per job (SPEC §16); a duplicate of a pending one is still an occurrence. On PostgreSQL the
    job's row is locked first, so concurrent creates in one job count one after the other."""
    limit = current_app.config["MAX_PENDING_PER_JOB"]
    params = {"job_id": job_id, "signature": signature}
    if db.engine.dialect.name == "postgresql":
        db.session.execute(_LOCK_JOB, params)
    if db.session.execute(_PENDING_IN_JOB, params).scalar_one() < limit:
        return
    if db.session.execute(_PENDING_TWIN, params).first() is not None:
        return
    raise TooManyRequests(
        f"Job {job_id!r} already has {limit} questions waiting for the founder (CONSOLE_MAX_PENDING_PER_JOB): "
        "wait for answers, or withdraw a question with POST /api/escalations/{id}/skip, before asking another.",
        retry_after=ROOM_RETRY_AFTER)


def _settle_by_rule(escalation: Escalation, rule: Row, now: dt.datetime) -> Escalation:
    """Inside the create's transaction: the founder's rule answers at once (SPEC §12)."""
    settled = db.session.execute(
        update(ESCALATIONS).where(ESCALATIONS.c.id == escalation.id, ESCALATIONS.c.status == PENDING)
        .values(status=RESOLVED, founder_decision=rule.decision, founder_guidance=rule.guidance, resolved_at=now,
                decided_by=BY_RULE, decided_via=None, rule_id=rule.id)
        .returning(*ESCALATIONS.c, memory.previous_decision_column())
    ).one()
    memory.count_use(rule, now)
    record_event(settled.job_id, settled.founder_id, SSEEventType.AGENT_ESCALATION_RESOLVED,
                 {**_resolution_payload(settled), "rule_id": str(rule.id)})
    return settled


def _deadline(data: EscalationCreate, options: list[dict[str, Any]], now: dt.datetime) -> dict[str, Any]:
    """expires_at, on_expiry and reminder_at of a new escalation (SPEC §10): the deadline
    from `expires_in` (or CONSOLE_DEFAULT_EXPIRES_IN), the reminder at three quarters of
    it, and the option applied then — the agent's `on_expiry`, which must be an option that
    needs no guidance, else the recommended option when it needs none."""
    on_expiry = data.on_expiry
    if on_expiry is not None:
        option = next((o for o in options if o["value"] == on_expiry), None)
        if option is None:
            allowed = ", ".join(o["value"] for o in options) or "none: this escalation has no options"
            raise ValidationFailed([FieldError("on_expiry", f"{on_expiry!r} is not one of the options ({allowed}).")])
        if on_expiry == PROVIDE_GUIDANCE or option.get("requires_guidance"):
            raise ValidationFailed([FieldError(
                "on_expiry", f"{on_expiry!r} needs guidance, which nobody writes when nobody answers; "
                             "choose an option that needs none.")])
    expires_in = data.expires_in if data.expires_in is not None else current_app.config.get("DEFAULT_EXPIRES_IN")
    if not expires_in:
        return {"expires_at": None, "on_expiry": on_expiry, "reminder_at": None}
    if on_expiry is None:
        on_expiry = next((o["value"] for o in options if o.get("recommended") and not o.get("requires_guidance")
                          and o["value"] != PROVIDE_GUIDANCE), None)
    return {"expires_at": now + dt.timedelta(seconds=expires_in), "on_expiry": on_expiry,
            "reminder_at": now + dt.timedelta(seconds=expires_in * 3 / 4)}


# --- read ------------------------------------------------------------------------------------

def _parse_id(escalation_id: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(escalation_id, uuid.UUID):
        return escalation_id
    try:
        return uuid.UUID(escalation_id)
    except (ValueError, TypeError, AttributeError):
        return None


@functools.cache
def _by_id_query(dialect: str) -> Select:
    return select(ESCALATIONS, memory.previous_decision_column()).where(ESCALATIONS.c.id == bindparam("id"))


def find_escalation(escalation_id: str | uuid.UUID, principal: Principal) -> Escalation | None:
    """The escalation if it exists and the caller may see it (`Principal.sees`: the
    orchestrator any; a scoped agent its job's; founders their own)."""
    parsed = _parse_id(escalation_id)
    if parsed is None:
        return None
    rows = read_rows(_by_id_query(db.engine.dialect.name), {"id": parsed})
    escalation = rows[0] if rows else None
    if escalation is None or not principal.sees(escalation.founder_id, escalation.job_id):
        return None
    return escalation


def get_escalation(escalation_id: str | uuid.UUID, principal: Principal) -> Escalation:
    """Like find_escalation, but NotFound; a foreign record answers exactly like a missing one."""
    escalation = find_escalation(escalation_id, principal)
    if escalation is None:
        raise NotFound(f"There is no escalation {str(escalation_id)!r}.")
    return escalation


@functools.cache
def _job_escalations_query(dialect: str, of_founder: bool, with_status: bool, paged: bool = False) -> Select:
    """Built once per shape (a hot path): bound by job_id [, founder_id] [, status]
    [, after_created_at, after_id, fetch]."""
    columns = ESCALATIONS.c
    query = (select(ESCALATIONS, memory.previous_decision_column())
             .where(columns.job_id == bindparam("job_id")))
    if of_founder:
        query = query.where(columns.founder_id == bindparam("founder_id"))
    if with_status:
        query = query.where(columns.status == bindparam("status"))
    if paged:
        query = query.where(tuple_(columns.created_at, columns.id)
                            < tuple_(bindparam("after_created_at", type_=columns.created_at.type),
                                     bindparam("after_id", type_=columns.id.type))).limit(bindparam("fetch"))
    return query.order_by(columns.created_at.desc(), columns.id.desc())


FAR_FUTURE = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)  # a first page's keyset: before everything
LAST_ID = uuid.UUID(int=2**128 - 1)


def list_job_escalations(job_id: str, principal: Principal, status: str | None = None, *,
                         limit: int | None = None, cursor: str | None = None) -> list[Escalation]:
    """A job's escalations, newest first ([] for an unknown or foreign job); with `limit`, at
    most limit + 1 from `cursor` on (the extra row says another page follows). Everything
    but the orchestrator sees only its founder's (`Principal.sees`, in SQL)."""
    if not possible_job_id(job_id) or not principal.sees_job(job_id):
        return []
    paged = limit is not None
    query = _job_escalations_query(db.engine.dialect.name, not principal.is_orchestrator, bool(status), paged)
    params = {"job_id": job_id, "founder_id": principal.founder_id, "status": status}
    if paged:
        after_created_at, after_id = decode_cursor(cursor) if cursor else (FAR_FUTURE, LAST_ID)
        params.update(after_created_at=after_created_at, after_id=after_id, fetch=limit + 1)
    return read_rows(query, params)


def escalation_json(escalation_id: str | uuid.UUID, principal: Principal) -> bytes:
    """The API's JSON of one escalation (NotFound like get_escalation). On PostgreSQL the
    database builds it (services/json_reads.py); elsewhere the row is serialised here."""
    parsed = _parse_id(escalation_id)
    if parsed is not None and db.engine.dialect.name == "postgresql":
        document = json_reads.escalation_document(parsed, principal)
        if document is None:
            raise NotFound(f"There is no escalation {str(escalation_id)!r}.")
        return document
    return escalation_json_bytes(get_escalation(escalation_id, principal))


def job_escalations_json(job_id: str, principal: Principal, status: str | None = None, *, limit: int = 100,
                         cursor: str | None = None) -> tuple[bytes, str | None]:
    """A page of the API's JSON list of a job's escalations, newest first ([] for an unknown or
    foreign job), and the cursor of the next page (None on the last; SPEC §16)."""
    if not possible_job_id(job_id) or not principal.sees_job(job_id):
        return b"[]", None
    after = decode_cursor(cursor) if cursor else (FAR_FUTURE, LAST_ID)
    if db.engine.dialect.name == "postgresql":
        document, last = json_reads.job_escalations_page(job_id, principal, status, after, limit)
        return document, (encode_cursor(last) if last is not None else None)
    rows = list_job_escalations(job_id, principal, status, limit=limit, cursor=cursor)
    if len(rows) > limit:
        return escalation_list_json_bytes(rows[:limit]), encode_cursor(rows[limit - 1])
    return escalation_list_json_bytes(rows), None


def encode_cursor(escalation: Escalation) -> str:
    raw = json.dumps([escalation.created_at.isoformat(), escalation.id.hex], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, escalation_id = json.loads(raw)
        if not isinstance(created_at, str) or not isinstance(escalation_id, str):
            raise ValueError("not a cursor")
        when = dt.datetime.fromisoformat(created_at)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, uuid.UUID(escalation_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed([FieldError("cursor", "not a cursor this API handed out; "
                                                     "pass next_cursor from the previous page")]) from None


def list_founder_escalations(founder_id: str, *, status: str | None = None, project_id: str | None = None,
                             job_id: str | None = None, limit: int = 50, cursor: str | None = None,
                             with_memory: bool = True) -> tuple[list[Escalation], str | None]:
    """The founder's escalations across jobs, newest first, a page at a time (keyset).
    `with_memory=False` leaves out each row's previous decision (the inbox's compact rows
    do not show it, and it is one correlated lookup per row)."""
    selected = (ESCALATIONS, memory.previous_decision_column()) if with_memory else (ESCALATIONS,)
    return _founder_page(selected, founder_id, status, project_id, job_id, limit, cursor)


def recently_decided(founder_id: str, limit: int, *, project_id: str | None = None, job_id: str | None = None,
                     with_memory: bool = True) -> list[Escalation]:
    """The founder's settled escalations (resolved, skipped, expired), most recently settled first."""
    selected = (ESCALATIONS, memory.previous_decision_column()) if with_memory else (ESCALATIONS,)
    return read_rows(_recently_decided_query(selected, founder_id, project_id, job_id, limit))


def _founder_page(selected, founder_id: str, status: str | None, project_id: str | None, job_id: str | None,
                  limit: int, cursor: str | None) -> tuple[list[Row], str | None]:
    columns = ESCALATIONS.c
    query = select(*selected).where(columns.founder_id == founder_id)
    if status:
        query = query.where(columns.status == status)
    query = _in_scope(query, project_id, job_id)
    if cursor:
        created_at, escalation_id = decode_cursor(cursor)
        query = query.where(tuple_(columns.created_at, columns.id) < tuple_(created_at, escalation_id))
    query = query.order_by(columns.created_at.desc(), columns.id.desc()).limit(limit + 1)
    rows = read_rows(query)
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1])
    return rows, None


def _recently_decided_query(selected, founder_id: str, project_id: str | None, job_id: str | None,
                            limit: int) -> Select:
    columns = ESCALATIONS.c
    query = _in_scope(select(*selected).where(columns.founder_id == founder_id,
                                              columns.status.in_([RESOLVED, SKIPPED, EXPIRED])), project_id, job_id)
    return query.order_by(columns.resolved_at.desc(), columns.id.desc()).limit(limit)


def count_pending(founder_id: str, job_id: str | None = None, project_id: str | None = None) -> int:
    columns = ESCALATIONS.c
    query = select(func.count()).select_from(ESCALATIONS).where(
        columns.founder_id == founder_id, columns.status == PENDING)
    return read_rows(_in_scope(query, project_id, job_id))[0][0]


@dataclass(frozen=True)
class PendingScope:
    """How many of the founder's questions wait in one project's job."""

    project_id: str
    job_id: str
    pending: int


_PENDING_BY_SCOPE = text("SELECT project_id, job_id, count(*) AS pending FROM agent_escalations "
                         "WHERE founder_id = :founder_id AND status = 'pending' GROUP BY project_id, job_id")


def pending_by_scope(founder_id: str) -> list[PendingScope]:
    """The founder's pending questions counted by project and job (the inbox's filters), most
    first. One index range of the founder's pending rows."""
    rows = read_text_rows(_PENDING_BY_SCOPE, {"founder_id": founder_id})
    scopes = [PendingScope(project_id, job_id, pending) for project_id, job_id, pending in rows]
    return sorted(scopes, key=lambda scope: (-scope.pending, scope.project_id, scope.job_id))


def _in_scope(query, project_id: str | None, job_id: str | None):
    columns = ESCALATIONS.c
    if project_id:
        query = query.where(columns.project_id == project_id)
    if job_id:
        query = query.where(columns.job_id == job_id)
    return query


# --- the inbox's cards: versions first (PostgreSQL) --------------------------------------------
# The inbox renders its cards from console/cards.py's cache, keyed by a version of each row.
# On PostgreSQL it reads the versions alone (an md5 of the row, with its previous decision,
# computed in the database) and the whole rows only of the cards not cached yet: building the
# whole rows of a page was three quarters of the inbox's statements in Python (bench/README.md).
# On SQLite the pages are the whole rows (and the cache keys cards by the row itself).

def _card_version_column(with_memory: bool) -> ColumnElement:
    previous = f", ({memory.previous_decision_sql('agent_escalations', 'postgresql')})" if with_memory else ""
    return literal_column(f"md5(row(agent_escalations.*{previous})::text)").label("card_version")


def _card_version_fields(with_memory: bool) -> tuple:
    """What console/cards.py keys a card by, besides the version."""
    columns = ESCALATIONS.c
    return (columns.id, columns.founder_id, columns.project_id, columns.error_signature, columns.status,
            columns.decided_by, columns.rule_id, columns.created_at, _card_version_column(with_memory))


def founder_card_page(founder_id: str, *, status: str, project_id: str | None = None, job_id: str | None = None,
                      limit: int = 50, cursor: str | None = None,
                      with_memory: bool = True) -> tuple[list[Row], str | None]:
    """list_founder_escalations for console/cards.render_cards: on PostgreSQL the page's card
    versions, else its whole rows."""
    if db.engine.dialect.name != "postgresql":
        return list_founder_escalations(founder_id, status=status, project_id=project_id, job_id=job_id,
                                        limit=limit, cursor=cursor, with_memory=with_memory)
    return _founder_page(_card_version_fields(with_memory), founder_id, status, project_id, job_id, limit, cursor)


def recently_decided_cards(founder_id: str, limit: int, *, project_id: str | None = None, job_id: str | None = None,
                           with_memory: bool = True) -> list[Row]:
    """recently_decided for console/cards.render_cards (versions on PostgreSQL, as above)."""
    if db.engine.dialect.name != "postgresql":
        return recently_decided(founder_id, limit, project_id=project_id, job_id=job_id, with_memory=with_memory)
    return read_rows(_recently_decided_query(_card_version_fields(with_memory), founder_id, project_id, job_id, limit))


def escalations_with_versions(escalation_ids: list[uuid.UUID], *, with_memory: bool = True) -> dict[uuid.UUID, Row]:
    """The whole rows of these escalations, each with the card version of what it holds."""
    selected = [ESCALATIONS, _card_version_column(with_memory)]
    if with_memory:
        selected.append(memory.previous_decision_column())
    rows = read_rows(select(*selected).where(ESCALATIONS.c.id.in_(escalation_ids)))
    return {row.id: row for row in rows}


# --- resolve and skip ------------------------------------------------------------------------

def guidance_required(escalation: Escalation, decision: str | None) -> bool:
    option = escalation_option(escalation, decision)
    return decision == PROVIDE_GUIDANCE or bool(option and option.get("requires_guidance"))


def _check_decision(escalation: Escalation, decision: str, guidance: str | None) -> None:
    errors = []
    if not decision:
        errors.append(FieldError("decision", "Choose one of the options."))
    elif escalation.options and escalation_option(escalation, decision) is None:
        allowed = ", ".join(o["value"] for o in escalation.options)
        errors.append(FieldError("decision", f"{decision!r} is not one of this escalation's options ({allowed})."))
    if decision and guidance is None and guidance_required(escalation, decision):
        errors.append(FieldError("guidance", "This choice needs guidance: tell the agent what you want."))
    if errors:
        raise ValidationFailed(errors)


def describe_settled(escalation: Escalation) -> str:
    if escalation.status == SKIPPED:
        return "The agent withdrew this question, so there is nothing left to decide."
    if escalation.status == EXPIRED:
        return "Nobody answered in time: this question expired without a decision, and the agent has moved on."
    if escalation.decided_by == BY_EXPIRY:
        chosen = (escalation_option(escalation, escalation.founder_decision) or {}).get("label")
        return (f"Nobody answered in time, so the agent went ahead with its safe default "
                f"(“{chosen or escalation.founder_decision}”). It cannot be changed now.")
    option = escalation_option(escalation, escalation.founder_decision)
    chosen = option["label"] if option else escalation.founder_decision
    return f"This was already decided (“{chosen}”), perhaps in another tab. A decision cannot be changed."


def _already_settled(escalation: Escalation, decision: str, guidance: str | None) -> Escalation:
    """A retry of the very same decision is a success; anything else is a conflict."""
    if (escalation.status == RESOLVED and escalation.decided_by == BY_FOUNDER
            and escalation.founder_decision == decision and escalation.founder_guidance == guidance):
        return escalation
    raise Conflict(describe_settled(escalation), escalation)


def resolve_escalation(escalation_id: str | uuid.UUID, founder_id: str, decision: str | None,
                       guidance: str | None, *, via: str = VIA_API, remember: bool = False) -> Escalation:
    """The founder's decision. Only the owner may decide (others get NotFound); the
    decision must be one of the options; guidance is stripped (blank → None) and required
    for `provide_guidance` and options that say so. The first decision wins: it is one
    conditional UPDATE, so under any number of concurrent resolves exactly one applies and
    emits `agent.escalation_resolved`. A retry of the same decision answers the record."""
    return _resolve(escalation_id, founder_id, decision, guidance, via, remember, as_document=False)


def resolve_escalation_json(escalation_id: str | uuid.UUID, founder_id: str, decision: str | None,
                            guidance: str | None, *, via: str = VIA_API, remember: bool = False) -> bytes:
    """resolve_escalation, answered as the API's JSON of the record: on PostgreSQL the
    decision's one statement also builds the document (services/json_reads.py)."""
    result = _resolve(escalation_id, founder_id, decision, guidance, via, remember, as_document=True)
    return result if isinstance(result, bytes) else escalation_json_bytes(result)


def _resolve(escalation_id: str | uuid.UUID, founder_id: str, decision: str | None, guidance: str | None,
             via: str, remember: bool, *, as_document: bool) -> Escalation | bytes:
    parsed = _parse_id(escalation_id)
    if parsed is None:
        raise NotFound(f"There is no escalation {str(escalation_id)!r}.")
    decision = (decision or "").strip()
    guidance = (guidance or "").strip() or None
    if db.engine.dialect.name == "postgresql" and not remember:
        won = _resolve_in_one_statement(parsed, founder_id, decision, guidance, via, as_document)
    else:
        won = _resolve_in_transaction(parsed, founder_id, decision, guidance, via, remember)
    if won is not None:
        return won
    # Nothing changed: the record is missing or foreign (404), the decision is not valid
    # (422), or it was decided before (200 for the same decision, else 409).
    current = find_escalation(parsed, Principal("founder", founder_id))
    if current is None:
        raise NotFound(f"There is no escalation {str(escalation_id)!r}.")
    if current.status == PENDING:
        _check_decision(current, decision, guidance)  # says what is wrong with the decision
        won = _resolve_in_transaction(parsed, founder_id, decision, guidance, via, remember)
        if won is not None:
            return won
        current = get_escalation(parsed, Principal("founder", founder_id))
    return _already_settled(current, decision, guidance)


def _resolve_in_transaction(escalation_id: uuid.UUID, founder_id: str, decision: str,
                            guidance: str | None, via: str, remember: bool = False) -> Escalation | None:
    """The decision as a transaction of two statements (SQLite; and the fallback): the
    conditional UPDATE, checked against the options it returns (an invalid decision rolls
    it back), then the event. None when the escalation is not pending (or not theirs)."""
    with write_transaction():
        won = db.session.execute(
            update(ESCALATIONS)
            .where(ESCALATIONS.c.id == escalation_id, ESCALATIONS.c.founder_id == founder_id,
                   ESCALATIONS.c.status == PENDING)
            .values(status=RESOLVED, founder_decision=decision, founder_guidance=guidance, resolved_at=utcnow(),
                    decided_by=BY_FOUNDER, decided_via=via)
            .returning(*ESCALATIONS.c, memory.previous_decision_column())
        ).one_or_none()
        if won is not None:
            _check_decision(won, decision, guidance)
            record_event(won.job_id, won.founder_id, SSEEventType.AGENT_ESCALATION_RESOLVED, _resolution_payload(won))
            if remember:
                memory.remember_decision(won)
    return won


def _resolve_in_one_statement(escalation_id: uuid.UUID, founder_id: str, decision: str,
                              guidance: str | None, via: str, as_document: bool = False) -> Escalation | bytes | None:
    """PostgreSQL: the whole decision in one autocommit statement, one round trip (what
    the ceiling in ../shared/peers does): the conditional UPDATE whose WHERE also checks
    the decision against the options, the event and its NOTIFY. None when nothing matched;
    the caller then tells why."""
    resolved_at = utcnow()
    payload = {"escalation_id": str(escalation_id), "status": RESOLVED, "resolution": decision,
               "guidance": guidance, "resolved_at": resolved_at.isoformat(), "decided_by": BY_FOUNDER,
               "decided_via": via}
    params = {
        "id": escalation_id, "founder_id": founder_id, "decision": decision, "guidance": guidance,
        "resolved_at": resolved_at, "payload": json.dumps(payload), "type": SSEEventType.AGENT_ESCALATION_RESOLVED,
        "provide_guidance": PROVIDE_GUIDANCE, "channel": NOTIFY_CHANNEL, "by": BY_FOUNDER, "via": via,
    }
    if as_document:  # the API's answer: a plain row off the driver (database.fetch_one)
        won = fetch_one(_RESOLVE_ONE_STATEMENT_DOCUMENT, params)
        if won is None:
            return None
        document, job_id, founder_id, event_id = won
        announce([(event_id, job_id, founder_id)])
        return document.encode()
    with db.engine.begin() as connection:  # the engine autocommits: no BEGIN, no COMMIT round trip
        won = connection.execute(_RESOLVE_ONE_STATEMENT, params).one_or_none()
    if won is None:
        return None
    announce([(won.event_id, won.job_id, won.founder_id)])
    return won


_ESCALATION_COLUMNS = ", ".join(column.name for column in ESCALATIONS.c)
_PREVIOUS_DECISION_SQL = memory.previous_decision_sql("won", "postgresql")  # of the resolved row `won`
_RESOLVE_ONE_STATEMENT_CTES = f"""
    WITH won AS (
        UPDATE agent_escalations
           SET status = 'resolved', founder_decision = :decision, founder_guidance = :guidance,
               resolved_at = :resolved_at, decided_by = :by, decided_via = :via
         WHERE id = :id AND founder_id = :founder_id AND status = 'pending'
           AND CAST(:decision AS TEXT) <> ''
           AND (jsonb_array_length(options) = 0
                OR options @> jsonb_build_array(jsonb_build_object('value', CAST(:decision AS TEXT))))
           AND (CAST(:guidance AS TEXT) IS NOT NULL OR NOT (
                CAST(:decision AS TEXT) = :provide_guidance
                OR options @> jsonb_build_array(
                     jsonb_build_object('value', CAST(:decision AS TEXT), 'requires_guidance', true))))
        RETURNING {_ESCALATION_COLUMNS}
    ), event AS (
        INSERT INTO job_events (job_id, founder_id, type, payload, created_at)
        SELECT won.job_id, won.founder_id, :type,
               CAST(:payload AS JSONB) || jsonb_build_object(
                   'project_id', won.project_id,
                   'resolution_label', (SELECT option ->> 'label' FROM jsonb_array_elements(won.options) AS option
                                         WHERE option ->> 'value' = won.founder_decision LIMIT 1)),
               :resolved_at
          FROM won
        RETURNING id, pg_notify(:channel, json_build_array(id, job_id, founder_id)::text)
    )"""
_RESOLVE_ONE_STATEMENT = text(f"""{_RESOLVE_ONE_STATEMENT_CTES}
    SELECT {_ESCALATION_COLUMNS}, (SELECT id FROM event) AS event_id, ({_PREVIOUS_DECISION_SQL}) AS previous_decision
      FROM won
""").columns(*ESCALATIONS.c, column("event_id", BigInteger), column("previous_decision", JSON))
# The same decision, answered as the API's document (four columns, not twenty-seven: psycopg
# and SQLAlchemy then have next to nothing to convert).
_RESOLVE_ONE_STATEMENT_DOCUMENT = text(json_reads.compact(f"""{_RESOLVE_ONE_STATEMENT_CTES}
    SELECT {json_reads.document_sql("won")}::text AS document, won.job_id, won.founder_id,
           (SELECT id FROM event) AS event_id
      FROM won
"""))


def skip_escalation(escalation_id: str | uuid.UUID, reason: str | None = None, *,
                    principal: Principal = AGENT) -> Escalation:
    """The agent withdraws its question. Skipping twice is fine; a decided one is a conflict.
    A job-scoped agent may skip only escalations it can see (NotFound otherwise)."""
    if not principal.is_orchestrator:
        visible = get_escalation(escalation_id, principal)
        principal.check_may_write(visible.job_id, visible.founder_id)
    parsed = _parse_id(escalation_id)
    if parsed is None:
        raise NotFound(f"There is no escalation {str(escalation_id)!r}.")
    reason = (reason or "").strip() or None
    with write_transaction():
        won = db.session.execute(
            update(ESCALATIONS)
            .where(ESCALATIONS.c.id == parsed, ESCALATIONS.c.status == PENDING)
            .values(status=SKIPPED, resolved_at=utcnow(), decided_by=BY_AGENT, decided_via=None)
            .returning(*ESCALATIONS.c, memory.previous_decision_column())
        ).one_or_none()
        if won is not None:
            record_event(won.job_id, won.founder_id, SSEEventType.AGENT_ESCALATION_RESOLVED,
                         {**_resolution_payload(won), "reason": reason})
            return won
        current = find_escalation(parsed, AGENT)
    if current is None:
        raise NotFound(f"There is no escalation {str(escalation_id)!r}.")
    if current.status == SKIPPED:
        return current
    raise Conflict(describe_settled(current), current)


def _resolution_payload(escalation: Escalation) -> dict[str, Any]:
    return {
        "escalation_id": str(escalation.id),
        "project_id": escalation.project_id,
        "status": escalation.status,
        "resolution": escalation.founder_decision if escalation.status == RESOLVED else None,
        "resolution_label": (escalation_option(escalation, escalation.founder_decision) or {}).get("label")
        if escalation.status == RESOLVED else None,
        "guidance": escalation.founder_guidance,
        "resolved_at": escalation.resolved_at.isoformat() if escalation.resolved_at else None,
        "decided_by": escalation.decided_by,
        "decided_via": escalation.decided_via,
    }

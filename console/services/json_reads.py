"""The two hottest reads, answered as JSON that PostgreSQL builds (what the ceiling in
../shared/peers does): one escalation by id, and a job's escalations. The document is the
API's `EscalationResponse`, key for key and value for value (tests/test_json_reads.py
compares it with the pydantic serialisation of the same rows), so the app only passes
bytes through: no row objects, no validation, no serialisation in Python.

On SQLite, and for everything else, the services read rows and `schemas` serialises them.
"""
from __future__ import annotations

import datetime as dt
import functools
import uuid
from types import SimpleNamespace
from typing import Any

from sqlalchemy import text

from ..auth import Principal
from ..database import fetch_one

ESCALATION_FIELDS = (
    "id", "session_id", "job_id", "project_id", "founder_id", "error_type", "error_signature",
    "plain_english_problem", "attempts_summary", "recommended_action", "options", "status", "founder_decision",
    "founder_guidance", "created_at", "resolved_at", "occurrences", "last_seen_at", "expires_at", "on_expiry",
    "decided_by", "decided_via", "rule_id",
)
TIMESTAMPS = {"created_at", "resolved_at", "last_seen_at", "expires_at"}


def _iso(column: str) -> str:
    """Python's datetime.isoformat() of a UTC timestamp: microseconds only when there are any."""
    return (f"(regexp_replace(to_char({column} AT TIME ZONE 'UTC','YYYY-MM-DD\"T\"HH24:MI:SS.US'),"
            f"'\\.0{{6}}$','')||'+00:00')")


def compact(sql: str) -> str:
    """One space between words: psycopg re-parses (does not cache) statements over 4 KiB,
    and indentation is most of ours. (No literal in them holds two spaces in a row.)"""
    return " ".join(sql.split())


def document_sql(alias: str) -> str:
    """json_build_object(...) of one escalation row `alias`, in EscalationResponse's order."""
    pairs = []
    for name in ESCALATION_FIELDS:
        value = _iso(f"{alias}.{name}") if name in TIMESTAMPS else f"{alias}.{name}"
        pairs.append(f"'{name}', {value}")
    previous = f"""(
        SELECT json_build_object(
                   'escalation_id', previous.id, 'decision', previous.founder_decision,
                   'label', (SELECT option ->> 'label' FROM jsonb_array_elements(previous.options) AS option
                              WHERE option ->> 'value' = previous.founder_decision LIMIT 1),
                   'guidance', previous.founder_guidance, 'decided_at', {_iso("previous.resolved_at")})
          FROM agent_escalations AS previous
         WHERE previous.founder_id = {alias}.founder_id AND previous.project_id = {alias}.project_id
           AND previous.error_signature = {alias}.error_signature AND previous.id <> {alias}.id
           AND previous.status = 'resolved' AND previous.decided_by = 'founder'
         ORDER BY previous.resolved_at DESC LIMIT 1)"""
    pairs.append(f"'previous_decision', {previous}")
    return compact("json_build_object(" + ", ".join(pairs) + ")")


_ONE = text(f"SELECT {document_sql('e')}::text AS document, e.founder_id, e.job_id "
            "FROM agent_escalations AS e WHERE e.id = :id")


@functools.cache
def _job_page(of_founder: bool, with_status: bool):
    """A page of a job's documents (keyset: before :after_created_at, :after_id; at most :limit),
    how many rows were read (:limit + 1 means another page follows), and the page's last row."""
    where = ["e.job_id = :job_id", "(e.created_at, e.id) < (:after_created_at, :after_id)"]
    if of_founder:
        where.append("e.founder_id = :founder_id")
    if with_status:
        where.append("e.status = :status")
    return text(compact(f"""
        WITH page AS (
            SELECT e.*, row_number() OVER (ORDER BY e.created_at DESC, e.id DESC) AS n
              FROM agent_escalations AS e WHERE {' AND '.join(where)}
             ORDER BY e.created_at DESC, e.id DESC LIMIT :limit + 1)
        SELECT coalesce(json_agg({document_sql('page')} ORDER BY page.n) FILTER (WHERE page.n <= :limit),
                        '[]')::text,
               count(*), max(page.created_at) FILTER (WHERE page.n = :limit),
               max(page.id::text) FILTER (WHERE page.n = :limit)
          FROM page"""))


def escalation_document(escalation_id: uuid.UUID, principal: Principal) -> bytes | None:
    """The API's JSON of one escalation the caller may see, or None (missing or not theirs)."""
    row = fetch_one(_ONE, {"id": escalation_id})
    if row is None:
        return None
    document, founder_id, job_id = row
    return document.encode() if principal.sees(founder_id, job_id) else None


def job_escalations_page(job_id: str, principal: Principal, status: str | None, after: tuple[dt.datetime, uuid.UUID],
                         limit: int) -> tuple[bytes, SimpleNamespace | None]:
    """A page of the API's JSON list of a job's escalations, newest first (the caller's only),
    and its last row's (created_at, id) when another page follows."""
    query = _job_page(not principal.is_orchestrator, bool(status))
    params: dict[str, Any] = {"job_id": job_id, "founder_id": principal.founder_id, "status": status,
                              "after_created_at": after[0], "after_id": after[1], "limit": limit}
    document, read, last_created_at, last_id = fetch_one(query, params)
    last = SimpleNamespace(created_at=last_created_at, id=uuid.UUID(last_id)) if read > limit else None
    return document.encode(), last

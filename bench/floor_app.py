"""The floor: the least a Python web app can do for get / list / resolve.

A bare Flask app on psycopg 3 (a psycopg_pool ConnectionPool when the package is there,
else one connection per gunicorn thread), doing the same SQL as the console, the same JWT
check (PyJWT, HS256, `exp` and `sub` required) and answering the same JSON shape. It is
what the console is compared against (bench/run): console rps / floor rps per endpoint.

    DATABASE_URL=postgresql://... CONSOLE_JWT_SECRET=... CONSOLE_AGENT_TOKEN=... \
    gunicorn -w 2 -k gthread --threads 8 --no-control-socket --chdir bench 'floor_app:create_app()'

Not part of the product: nothing here is imported by console/.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import threading
import uuid
from contextlib import contextmanager

import jwt
import psycopg
from flask import Flask, Response, request
from psycopg.types.json import Jsonb

try:  # optional: the per-thread connection below is the fallback
    from psycopg_pool import ConnectionPool
except ImportError:  # pragma: no cover - depends on the environment
    ConnectionPool = None

COLUMNS = (
    "id", "session_id", "job_id", "project_id", "founder_id", "error_type", "error_signature",
    "plain_english_problem", "attempts_summary", "recommended_action", "options", "status",
    "founder_decision", "founder_guidance", "created_at", "resolved_at", "occurrences", "last_seen_at",
)
SELECT_COLUMNS = ", ".join(COLUMNS)
TIMESTAMPS = ("created_at", "resolved_at", "last_seen_at")

# The same advisory lock and channel as console/events.py, so ids stay ordered across both.
EVENT_LOG_LOCK_KEY = 0x6573_6361_6C61
NOTIFY_CHANNEL = "console_job_events"

GET_SQL = f"SELECT {SELECT_COLUMNS} FROM agent_escalations WHERE id = %s"
LIST_SQL = (f"SELECT {SELECT_COLUMNS} FROM agent_escalations WHERE job_id = %s AND founder_id = %s "
            "ORDER BY created_at DESC, id DESC")
LIST_AGENT_SQL = (f"SELECT {SELECT_COLUMNS} FROM agent_escalations WHERE job_id = %s "
                  "ORDER BY created_at DESC, id DESC")
RESOLVE_SQL = (f"UPDATE agent_escalations SET status = 'resolved', founder_decision = %s, founder_guidance = %s, "
               f"resolved_at = %s WHERE id = %s AND founder_id = %s AND status = 'pending' RETURNING {SELECT_COLUMNS}")
EVENT_SQL = "INSERT INTO job_events (job_id, type, payload, created_at) VALUES (%s, %s, %s, %s) RETURNING id"


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra):
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def _json(data, status: int = 200, mimetype: str = "application/json") -> Response:
    return Response(json.dumps(data), status=status, mimetype=mimetype)


def _row(row: tuple) -> dict:
    out = dict(zip(COLUMNS, row))
    out["id"] = str(out["id"])
    for name in TIMESTAMPS:
        value = out[name]
        out[name] = value.astimezone(dt.UTC).isoformat() if value is not None else None
    return out


def create_app() -> Flask:
    app = Flask(__name__)
    dsn = os.environ["DATABASE_URL"]
    jwt_secret = os.environ["CONSOLE_JWT_SECRET"]
    agent_digest = hashlib.sha256(os.environ["CONSOLE_AGENT_TOKEN"].encode()).digest()

    if ConnectionPool is not None:
        pool = ConnectionPool(dsn, min_size=2, max_size=10, kwargs={"autocommit": True}, open=True)

        @contextmanager
        def connection():
            with pool.connection() as conn:
                yield conn
    else:
        local = threading.local()

        @contextmanager
        def connection():
            conn = getattr(local, "conn", None)
            if conn is None or conn.closed:
                conn = local.conn = psycopg.connect(dsn, autocommit=True)
            try:
                yield conn
            except psycopg.OperationalError:
                conn.close()
                raise

    def principal() -> tuple[str, str | None]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Problem(401, "Unauthorized", "Send 'Authorization: Bearer <token>'.")
        if hmac.compare_digest(hashlib.sha256(token.encode()).digest(), agent_digest):
            return "agent", None
        try:
            claims = jwt.decode(token, jwt_secret, algorithms=["HS256"], leeway=10,
                                options={"require": ["exp", "sub"]})
        except jwt.PyJWTError as error:
            raise Problem(401, "Unauthorized", f"The token is not valid: {error}.") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Problem(401, "Unauthorized", "The token's subject is not a founder id.")
        return "founder", sub

    @app.errorhandler(Problem)
    def problem(error: Problem):
        response = _json({"type": "about:blank", "title": error.title, "status": error.status,
                          "detail": error.detail, **error.extra}, error.status, "application/problem+json")
        if error.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def not_found(escalation_id: str) -> Problem:
        return Problem(404, "Not found", f"There is no escalation {escalation_id!r}.")

    def parse_id(escalation_id: str) -> uuid.UUID:
        try:
            return uuid.UUID(escalation_id)
        except ValueError:
            raise not_found(escalation_id) from None

    @app.get("/healthz")
    def healthz():
        with connection() as conn:
            conn.execute("SELECT 1")
        return _json({"status": "ok"})

    @app.get("/api/escalations/<escalation_id>")
    def get_escalation(escalation_id: str):
        kind, founder_id = principal()
        parsed = parse_id(escalation_id)
        with connection() as conn:
            row = conn.execute(GET_SQL, (parsed,)).fetchone()
        if row is None or (kind == "founder" and row[4] != founder_id):
            raise not_found(escalation_id)
        return _json(_row(row))

    @app.get("/api/jobs/<job_id>/escalations")
    def list_job_escalations(job_id: str):
        kind, founder_id = principal()
        with connection() as conn:
            if kind == "agent":
                rows = conn.execute(LIST_AGENT_SQL, (job_id,)).fetchall()
            else:
                rows = conn.execute(LIST_SQL, (job_id, founder_id)).fetchall()
        return _json([_row(r) for r in rows])

    @app.post("/api/escalations/<escalation_id>/resolve")
    def resolve(escalation_id: str):
        kind, founder_id = principal()
        if kind != "founder":
            raise Problem(403, "Forbidden", "This action needs a founder.")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("decision"), str):
            raise Problem(422, "Invalid input", "decision: required",
                          errors=[{"field": "decision", "message": "required"}])
        decision = body["decision"].strip()
        guidance = (body.get("guidance") or "").strip() or None
        parsed = parse_id(escalation_id)
        now = dt.datetime.now(dt.UTC)
        with connection() as conn:
            with conn.transaction():
                row = conn.execute(RESOLVE_SQL, (decision, guidance, now, parsed, founder_id)).fetchone()
                if row is not None:
                    record = _row(row)
                    option = next((o for o in record["options"] if o.get("value") == decision), None)
                    if not decision or (record["options"] and option is None):
                        raise Problem(422, "Invalid input", f"decision: {decision!r} is not an option",
                                      errors=[{"field": "decision", "message": "not one of the options"}])
                    if guidance is None and (decision == "provide_guidance"
                                             or (option and option.get("requires_guidance"))):
                        raise Problem(422, "Invalid input", "guidance: required for this choice",
                                      errors=[{"field": "guidance", "message": "required for this choice"}])
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOG_LOCK_KEY,))
                    payload = {"escalation_id": record["id"], "project_id": record["project_id"],
                               "status": "resolved", "resolution": decision, "guidance": guidance,
                               "resolved_at": record["resolved_at"]}
                    event_id = conn.execute(EVENT_SQL, (record["job_id"], "agent.escalation_resolved",
                                                        Jsonb(payload), now)).fetchone()[0]
                    conn.execute("SELECT pg_notify(%s, %s)",
                                 (NOTIFY_CHANNEL, json.dumps([event_id, record["job_id"], founder_id])))
                    return _json(record)
            current = conn.execute(GET_SQL, (parsed,)).fetchone()
        if current is None or current[4] != founder_id:
            raise not_found(escalation_id)
        record = _row(current)
        if (record["status"] == "resolved" and record["founder_decision"] == decision
                and record["founder_guidance"] == guidance):
            return _json(record)
        raise Problem(409, "Conflict", "This escalation was already decided.", escalation=record)

    return app

"""The OpenAPI 3.1 document of /api, generated from the pydantic models in schemas.py.

`OPERATIONS` lists every /api route; a test checks it against the app's URL map, so a
route cannot be added without being documented.
"""
from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import schemas as s

FOUNDER, AGENT = "founder", "agent"

# (method, path, summary, who, query model, request model, {status: (description, response model | None)})
OPERATIONS: list[tuple[str, str, str, tuple[str, ...], type[BaseModel] | None, type[BaseModel] | None, dict]] = [
    ("get", "/api/escalations/{escalation_id}", "Read one escalation; ?wait=S long-polls while it is pending",
     (FOUNDER, AGENT), s.EscalationQuery, None,
     {200: ("The escalation", s.EscalationResponse),
      429: ("With ?wait=: the credential holds CONSOLE_MAX_STREAMS_PER_TOKEN streams and long-polls (Retry-After)",
            s.ProblemDetails)}),
    ("get", "/api/escalations", "The founder's escalations across jobs, newest first, paged by cursor",
     (FOUNDER,), s.InboxQuery, None, {200: ("A page", s.EscalationPage)}),
    ("post", "/api/escalations/{escalation_id}/resolve", "The founder's decision (first decision wins)",
     (FOUNDER,), None, s.ResolveRequest,
     {200: ("Resolved (or the identical decision retried)", s.EscalationResponse),
      409: ("Already decided differently, or skipped; `escalation` is the current record", s.ProblemDetails)}),
    ("post", "/api/escalations/{escalation_id}/skip", "The agent withdraws its question",
     (AGENT,), None, s.SkipRequest,
     {200: ("Skipped", s.EscalationResponse), 409: ("Already resolved", s.ProblemDetails)}),
    ("get", "/api/jobs/{job_id}/escalations",
     "A job's escalations, newest first, a page of `limit`; a further page is in the `Link: <…>; rel=\"next\"` header",
     (FOUNDER, AGENT), s.JobEscalationsQuery, None,
     {200: ("The list ([] for an unknown or foreign job)", {"type": "array", "items": {"$ref": "#/components/schemas/EscalationResponse"}})}),
    ("post", "/api/jobs/{job_id}/escalations", "Escalate (or count another occurrence of the open escalation)",
     (AGENT,), None, s.EscalationCreate,
     {201: ("Created; emits agent.waiting_for_input", s.EscalationResponse),
      200: ("The pending escalation with the same signature, occurrences + 1", s.EscalationResponse),
      409: ("The job belongs to another founder, or to another project", s.ProblemDetails),
      429: ("CONSOLE_MAX_PENDING_PER_JOB questions of the job are pending (Retry-After)", s.ProblemDetails)}),
    ("post", "/api/jobs/{job_id}/events", "Post an agent event to the job's stream",
     (AGENT,), None, s.EventCreate,
     {201: ("The stored event", s.EventEnvelope),
      409: ("The job belongs to another founder, or to another project", s.ProblemDetails)}),
    ("get", "/api/jobs/{job_id}/events", "The job's stored events in id order",
     (FOUNDER, AGENT), s.EventsQuery, None, {200: ("A page", s.EventPage)}),
    ("get", "/api/jobs/{job_id}/events/stream",
     "Server-Sent Events: replay after Last-Event-ID or ?after=, then live; heartbeat every 15 s",
     (FOUNDER, AGENT), s.StreamQuery, None,
     {200: ("text/event-stream of `id:`/`event:`/`data:` frames", "text/event-stream"),
      404: ("Unknown or foreign job", s.ProblemDetails),
      429: ("The credential holds CONSOLE_MAX_STREAMS_PER_TOKEN streams and long-polls (Retry-After)",
            s.ProblemDetails)}),
    ("get", "/api/me/rules", "The founder's remembered decisions (rules), newest first",
     (FOUNDER,), None, None, {200: ("The rules", s.RuleList)}),
    ("delete", "/api/me/rules/{rule_id}", "Revoke one of the founder's rules",
     (FOUNDER,), None, None, {204: ("Revoked", None), 404: ("No such rule of yours", s.ProblemDetails)}),
    ("get", "/api/me/settings", "The founder's notification settings (the defaults until set)",
     (FOUNDER,), None, None, {200: ("The settings", s.NotificationSettingsDocument)}),
    ("put", "/api/me/settings", "Replace the founder's notification settings (a field left out takes its default)",
     (FOUNDER,), None, s.NotificationSettingsDocument,
     {200: ("The stored settings", s.NotificationSettingsDocument),
      422: ("A field is invalid: `errors` names it (email, email_mode, slack_webhook_url, slack_user_id, "
            "timezone, quiet_hours)", s.ProblemDetails)}),
]

MODELS = [s.EscalationCreate, s.EscalationOption, s.ResolveRequest, s.SkipRequest, s.EventCreate,
          s.EscalationResponse, s.EscalationPage, s.EventEnvelope, s.EventPage, s.ProblemDetails, s.HealthResponse,
          s.PreviousDecision, s.ProblemFieldError, s.RuleResponse, s.RuleList, s.NotificationSettingsDocument, s.QuietHours]

COMMON_ERRORS = {
    400: "The body is empty, not valid JSON, or not a JSON object",
    401: "Missing or invalid credentials (WWW-Authenticate: Bearer)",
    403: "The wrong kind of caller (agent token on a founder action, or the reverse), or a scoped token outside "
         "its job, founder or project",
    404: "Not found, or not yours",
    413: "Body over 256 KiB",
    415: "Body is not JSON",
    422: "Invalid input: `errors` lists [{field, message}]",
    503: "The database is not answering; retry",
}


# Tools read the schema of text/event-stream two ways before OpenAPI 3.2's itemSchema: per
# event (schemathesis validates each event against it) or as the whole body (a generated
# client). Either a ServerSentEvent or a string, so both hold: each event is a
# ServerSentEvent whose `data` is an EventEnvelope, and openapi-python-client's client hands
# the body over as text instead of parsing it as JSON.
SSE_STREAM = {"anyOf": [{"$ref": "#/components/schemas/ServerSentEvent"}, {"type": "string"}],
              "description": "Each event is a ServerSentEvent; the body as a whole is text"}
SSE_EVENT = {
    "type": "object",
    "description": "One Server-Sent Event: `event` is the envelope's `type` (or `heartbeat`), `id` the event id, "
                   "`data` the envelope as JSON (`{}` for a heartbeat)",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/EventEnvelope"}},
        "retry": {"type": "integer", "minimum": 0},
    },
}


def _schema_ref(model: Any) -> dict:
    if isinstance(model, dict):
        return model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _parameters(path: str, query_model: type[BaseModel] | None) -> list[dict]:
    params = [{"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
              for part in path.split("/") if part.startswith("{")]
    if query_model is not None:
        schema = query_model.model_json_schema()
        for name, prop in schema.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in schema.get("required", []),
                           "schema": prop, "description": prop.get("description", "")})
    if path.endswith("/stream"):
        params.append({"name": "Last-Event-ID", "in": "header", "required": False,
                       "schema": {"type": "integer", "minimum": 0}})
    return params


@functools.cache
def openapi_document() -> dict:
    _, top = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    paths: dict[str, dict] = {}
    for method, path, summary, who, query_model, body_model, responses in OPERATIONS:
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "security": [{"founderJWT": []} if w == FOUNDER else {"agentToken": []} for w in who],
            "parameters": _parameters(path, query_model),
            "responses": {},
        }
        if body_model is not None:
            operation["requestBody"] = {"required": body_model is not s.SkipRequest,
                                        "content": {"application/json": {"schema": _schema_ref(body_model)}}}
        for status, (description, model) in responses.items():
            content_type = "application/problem+json" if model is s.ProblemDetails else "application/json"
            if model is None:  # no body (204)
                operation["responses"][str(status)] = {"description": description}
                continue
            if model == "text/event-stream":
                operation["responses"][str(status)] = {
                    "description": description, "content": {"text/event-stream": {"schema": SSE_STREAM}}}
                continue
            operation["responses"][str(status)] = {
                "description": description, "content": {content_type: {"schema": _schema_ref(model)}}}
        for status, description in COMMON_ERRORS.items():
            operation["responses"].setdefault(str(status), {
                "description": description,
                "content": {"application/problem+json": {"schema": _schema_ref(s.ProblemDetails)}}})
        paths.setdefault(path, {})[method] = operation
    paths["/healthz"] = {"get": {"summary": "Liveness and database reachability", "operationId": "get_healthz",
                                 "security": [], "responses": {
                                     "200": {"description": "ok", "content": {"application/json": {"schema": _schema_ref(s.HealthResponse)}}},
                                     "503": {"description": "The database is not answering",
                                             "content": {"application/problem+json": {"schema": _schema_ref(s.ProblemDetails)}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Escalation console API", "version": "1.0.0",
                 "description": "Agents escalate; founders decide; the decision flows back over the job's event stream."},
        "paths": paths,
        "components": {
            "schemas": {**top["$defs"], "ServerSentEvent": SSE_EVENT},
            "securitySchemes": {
                "founderJWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "A founder's JWT: `sub` is the founder id"},
                "agentToken": {"type": "http", "scheme": "bearer", "description": (
                    "CONSOLE_AGENT_TOKEN (the orchestrator: every job), or a job-scoped agent JWT "
                    "(HS256 with CONSOLE_AGENT_JWT_SECRET; claims role \"agent\", job_id, founder_id, exp; "
                    "`flask --app console agent-token --job JOB --founder FOUNDER`): only that job and "
                    "founder — other jobs' records answer 404 or an empty list, a write elsewhere 403")},
            },
        },
    }

"""The JSON API (SPEC §6): parse, call a service, serialise. No rules live here."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, json, jsonify, request, url_for
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from .. import realtime
from ..auth import api_auth
from ..errors import FieldError, ValidationFailed
from ..events import event_envelope
from ..schemas import (
    MAX_JSON_DEPTH, json_shape_problem,
    EscalationCreate, EscalationQuery, EventCreate, EventsQuery, InboxQuery, JobEscalationsQuery, ResolveRequest,
    SkipRequest, escalation_json_bytes, escalation_page_json_bytes, parse, rule_list_json_bytes,
)
from ..services import escalations as escalation_service
from ..services import jobs as job_service
from ..services import memory as memory_service
from ..services import notifications as notification_service
from ..stream_slots import stream_slot

bp = Blueprint("api", __name__, url_prefix="/api")


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def json_body(*, required: bool = True) -> dict[str, Any]:
    """The request's JSON object: 415 when it is not JSON, 400 when it does not parse or is
    not an object (413 over the size limit comes from MAX_CONTENT_LENGTH)."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise BadRequest("The request body is empty; send a JSON object.")
        return {}
    if not (request.mimetype == "application/json" or request.mimetype.endswith("+json")):
        raise UnsupportedMediaType("Send the body as JSON, with 'Content-Type: application/json'.")
    try:
        data = json.loads(raw, parse_constant=_not_json, parse_float=_finite_float)  # no NaN, Infinity, 1e400
    except ValueError as error:
        raise BadRequest(f"The body is not valid JSON: {error}.") from None
    except RecursionError:
        data, problem = None, f"nests deeper than {MAX_JSON_DEPTH} levels"
    else:
        if not isinstance(data, dict):
            raise BadRequest("The body must be a JSON object.")
        problem = json_shape_problem(data)  # before any model walks it (SPEC §16: 422, never 500)
    if problem is not None:
        raise ValidationFailed([FieldError("payload" if request.path.endswith("/events") else "body", problem)])
    return data


def query(model):
    return parse(model, request.args.to_dict())


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="application/json")


# --- escalations -----------------------------------------------------------------------------

@bp.get("/escalations/<escalation_id>")
@api_auth()
def get_escalation(escalation_id: str):
    wait = query(EscalationQuery).wait
    if wait:
        with stream_slot():
            settled = realtime.wait_until_settled(escalation_id, g.principal, wait)
        return json_response(escalation_json_bytes(settled))
    return json_response(escalation_service.escalation_json(escalation_id, g.principal))


@bp.get("/jobs/<job_id>/escalations")
@api_auth()
def list_job_escalations(job_id: str):
    params = query(JobEscalationsQuery)
    body, next_cursor = escalation_service.job_escalations_json(job_id, g.principal, params.status,
                                                               limit=params.limit, cursor=params.cursor)
    resp = json_response(body)
    if next_cursor is not None:  # RFC 8288: the body stays part one's bare list
        following = url_for("api.list_job_escalations", job_id=job_id, status=params.status, limit=params.limit,
                            cursor=next_cursor)
        resp.headers["Link"] = f'<{following}>; rel="next"'
    return resp


@bp.post("/jobs/<job_id>/escalations")
@api_auth(founder=False)
def create_escalation(job_id: str):
    data = parse(EscalationCreate, json_body())
    escalation, created = escalation_service.create_escalation(job_id, data, principal=g.principal)
    return json_response(escalation_json_bytes(escalation), 201 if created else 200)


@bp.get("/escalations")
@api_auth(agent=False)
def list_founder_escalations():
    params = query(InboxQuery)
    items, next_cursor = escalation_service.list_founder_escalations(
        g.principal.founder_id, status=params.status, project_id=params.project_id, job_id=params.job_id,
        limit=params.limit, cursor=params.cursor)
    return json_response(escalation_page_json_bytes(items, next_cursor))


@bp.post("/escalations/<escalation_id>/resolve")
@api_auth(agent=False)
def resolve_escalation(escalation_id: str):
    data = parse(ResolveRequest, json_body())
    return json_response(escalation_service.resolve_escalation_json(
        escalation_id, g.principal.founder_id, data.decision, data.guidance, remember=data.remember))


@bp.post("/escalations/<escalation_id>/skip")
@api_auth(founder=False)
def skip_escalation(escalation_id: str):
    data = parse(SkipRequest, json_body(required=False))
    return json_response(escalation_json_bytes(escalation_service.skip_escalation(
        escalation_id, data.reason, principal=g.principal)))


# --- the job event log -----------------------------------------------------------------------

@bp.post("/jobs/<job_id>/events")
@api_auth(founder=False)
def post_job_event(job_id: str):
    data = parse(EventCreate, json_body())
    event = job_service.post_job_event(job_id, data.type, data.founder_id, data.project_id, data.payload,
                                       principal=g.principal)
    return jsonify(event_envelope(event)), 201


@bp.get("/jobs/<job_id>/events")
@api_auth()
def list_job_events(job_id: str):
    params = query(EventsQuery)
    events = job_service.list_job_events(job_id, g.principal, params.after, params.limit)
    return jsonify({"items": [event_envelope(e) for e in events],
                    "next_after": events[-1].id if events else params.after})


# --- the founder's remembered decisions (SPEC §12) -------------------------------------------

@bp.get("/me/rules")
@api_auth(agent=False)
def list_rules():
    return json_response(rule_list_json_bytes(memory_service.list_rules(g.principal.founder_id)))


@bp.delete("/me/rules/<rule_id>")
@api_auth(agent=False)
def revoke_rule(rule_id: str):
    memory_service.revoke_rule(rule_id, g.principal.founder_id)
    return Response(status=204)


# --- the founder's notification settings (SPEC §11) ------------------------------------------

@bp.get("/me/settings")
@api_auth(agent=False)
def get_notification_settings():
    document = notification_service.get_settings(g.principal.founder_id)
    return json_response(document.model_dump_json().encode())


@bp.put("/me/settings")
@api_auth(agent=False)
def put_notification_settings():
    document = notification_service.parse_settings(json_body())
    notification_service.save_settings(g.principal.founder_id, document)
    return json_response(document.model_dump_json().encode())

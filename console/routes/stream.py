"""Server-Sent Events: the job event stream of the API (bearer tokens)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, g, request

from ..auth import api_auth
from ..errors import FieldError, NotFound, ValidationFailed
from ..inputs import ascii_int
from ..realtime import job_event_stream
from ..schemas import StreamQuery, parse
from ..services.jobs import job_visible_to
from ..stream_slots import held_stream

bp = Blueprint("stream", __name__)


def resume_point() -> int:
    """Where a (re)connecting client resumes: Last-Event-ID, else ?after=, else the start."""
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        event_id = ascii_int(header)
        if event_id is None:
            raise ValidationFailed([FieldError("Last-Event-ID", "must be an event id (a non-negative integer)")])
        return event_id
    return parse(StreamQuery, request.args.to_dict()).after or 0


def sse_response(stream) -> Response:
    return Response(stream, mimetype="text/event-stream", headers={
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    })


@bp.get("/api/jobs/<job_id>/events/stream")
@api_auth()
def job_events(job_id: str):
    after = resume_point()
    if not job_visible_to(job_id, g.principal):
        raise NotFound(f"There is no job {job_id!r}.")
    return sse_response(held_stream(job_event_stream(current_app._get_current_object(), job_id, after)))

"""The founder console (SPEC §7): the same services as the API, templates instead of JSON.

Every form works without JavaScript (post/redirect/get with 303); with htmx the resolve
form swaps its card in place and gets the card alone back.
"""
from __future__ import annotations

import functools
from typing import Callable

from flask import (
    Blueprint, Response, current_app, redirect, render_template, request, session, stream_with_context, url_for,
)
from sqlalchemy.exc import DBAPIError, TimeoutError as PoolTimeoutError

from ..auth import (
    Principal, current_founder_id, end_console_session, end_every_console_session, start_console_session,
    verify_founder_token_until,
)
from ..errors import Conflict, NotFound, Unauthorized, ValidationFailed
from ..events import event_envelope, latest_visible_event_id
from ..cards import CARD, CLOCK_FILTERS, SUMMARY, form_csrf_token, render_card, render_cards
from ..live import (
    InboxFilters, console_frame, describe_event, duration, founder_rule, rule_not_applied, status_words,
)
from ..models import VIA_CONSOLE, escalation_option
from ..realtime import founder_event_stream, job_event_stream
from ..routes.stream import resume_point, sse_response
from ..schemas import UNSAFE_IN_IDENTIFIERS, InboxPageQuery, ResolveRequest, parse
from ..services import escalations as escalation_service
from ..services import jobs as job_service
from ..services import login_links
from ..services import memory as memory_service
from ..services import notifications as notification_service
from ..services.notifications import notification_timezones, settings_form_document
from ..stream_slots import held_stream

bp = Blueprint("pages", __name__)

INBOX_PAGE_SIZE = 100
INBOX_VIEW_KEY = "inbox_view"
RECENTLY_DECIDED = 20
TIMELINE_LENGTH = 200


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def login_required(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if current_founder_id() is None:
            return redirect(url_for("pages.login", next=request.full_path.rstrip("?")), 303)
        return view(*args, **kwargs)

    return wrapped


def founder() -> Principal:
    return Principal("founder", current_founder_id())


def signed_in_founder() -> str | None:
    """The header's "Signed in as": a page that shows it must still render while the database
    is away (the 503 page), so an outage here reads as signed out."""
    try:
        return current_founder_id()
    except (DBAPIError, PoolTimeoutError):
        return None


# --- signing in and out ------------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect (SPEC §16). Control characters are
    removed first, as a browser or Werkzeug would (`/\t/evil.example` is `//evil.example`);
    then it must start with one `/`, not `//` or `/\\`."""
    cleaned = UNSAFE_IN_IDENTIFIERS.sub("", target or "")
    if cleaned.startswith("/") and not cleaned.startswith(("//", "/\\")) and "\\" not in cleaned:
        return cleaned
    return url_for("pages.inbox")


@bp.get("/login")
def login():
    notice = ("You are signed out on every device." if request.args.get("signed_out") == "everywhere" else None)
    return render_template("login.html", next=request.args.get("next", ""), notice=notice)


@bp.post("/login")
def login_submit():
    token = (request.form.get("token") or "").strip()
    try:
        founder_id, token_expires = verify_founder_token_until(token)
    except Unauthorized as error:
        return render_template("login.html", error=error.detail, next=request.form.get("next", "")), 401
    start_console_session(founder_id, until=token_expires)
    return redirect(_safe_next(request.form.get("next")), 303)


def make_login_link(founder_id: str) -> str:
    """A short-lived, single-use link that signs the founder in (after one confirming click)."""
    token = login_links.new_login_token(founder_id)
    return current_app.config["BASE_URL"].rstrip("/") + url_for("pages.login_link", t=token)


def _link_refused():
    signed_in_as = current_founder_id()
    advice = "" if signed_in_as else " Ask for a new one, or paste a token below."
    return render_template("login.html", signed_in_as=signed_in_as,
                           error="This sign-in link has expired, has been used already, or is not valid." + advice), 400


@bp.get("/login/link")
def login_link():
    # A page with one button, not a sign-in: link previewers (chat apps, mail scanners) GET links.
    token = request.args.get("t", "")
    if login_links.link_founder(token) is None:
        return _link_refused()
    return render_template("login_link.html", token=token)


@bp.post("/login/link")
def login_link_submit():
    founder_id = login_links.spend_login_link(request.form.get("t", ""))
    if founder_id is None:
        return _link_refused()
    start_console_session(founder_id)
    return redirect(url_for("pages.inbox"), 303)


@bp.post("/logout")
def logout():
    end_console_session()
    return redirect(url_for("pages.login"), 303)


@bp.post("/logout/everywhere")
@login_required
def logout_everywhere():
    end_every_console_session(current_founder_id())
    return redirect(url_for("pages.login", signed_out="everywhere"), 303)


# --- pages ---------------------------------------------------------------------------------------

@bp.get("/")
@login_required
def inbox():
    """The founder's pending questions, newest first, then the recently decided ones.
    `?project=` and `?job=` narrow both lists; `?view=compact` shows one line per question
    (each opens in place) and `?view=full` the whole cards; the choice is remembered."""
    founder_id = current_founder_id()
    params = parse(InboxPageQuery, request.args.to_dict())
    view = remember_inbox_view(params.view)
    full = view == "full"
    live_after = latest_visible_event_id()  # before the reads: nothing committed after them is missed
    pending, next_cursor = escalation_service.founder_card_page(
        founder_id, status="pending", project_id=params.project, job_id=params.job, limit=INBOX_PAGE_SIZE,
        cursor=params.cursor, with_memory=full)
    decided = escalation_service.recently_decided_cards(founder_id, RECENTLY_DECIDED, project_id=params.project,
                                                        job_id=params.job, with_memory=full)
    filters = InboxFilters.of(escalation_service.pending_by_scope(founder_id), params.project, params.job, view)
    partial = CARD if full else SUMMARY
    load = functools.partial(escalation_service.escalations_with_versions, with_memory=full)
    return render_template("inbox.html", pending_cards=render_cards(pending, partial, load=load),
                           decided_cards=render_cards(decided, partial, load=load), next_cursor=next_cursor,
                           view=view, filters=filters, pending_count=filters.pending_in_scope, live_after=live_after)


def remember_inbox_view(asked: str | None) -> str:
    """The inbox view the founder asked for, kept in the session; else the last one they chose."""
    if asked is not None and session.get(INBOX_VIEW_KEY) != asked:
        session[INBOX_VIEW_KEY] = asked
    return asked or session.get(INBOX_VIEW_KEY) or "full"


@bp.get("/jobs/<job_id>")
@login_required
def job(job_id: str):
    live_after = latest_visible_event_id()
    escalations = escalation_service.list_job_escalations(job_id, founder())
    escalations.sort(key=lambda e: e.status != "pending")  # stable: pending first, each newest first
    events = job_service.recent_job_events(job_id, founder(), TIMELINE_LENGTH)
    return render_template("job.html", job_id=job_id, escalations=escalations, events=events,
                           known=bool(escalations or events), live_after=live_after)


@bp.get("/escalations/<escalation_id>")
@login_required
def escalation(escalation_id: str):
    """One card. `?decision=` (a message's option button, a pushed notification's action)
    opens it with that option chosen; `&fill=previous` (the "Same as last time" link) also
    fills in the previous decision's guidance, read here: guidance, often a credential, is
    never put in a URL (SPEC §16). A GET never decides: the founder still sends."""
    found = escalation_service.get_escalation(escalation_id, founder())
    chosen = request.args.get("decision", "")[:255]
    form = {}
    if chosen and found.status == "pending" and (not found.options or escalation_option(found, chosen)):
        form = {"decision": chosen, "guidance": ""}
        previous = memory_service.previous_decision(found) if request.args.get("fill") == "previous" else None
        if previous and previous.get("decision") == chosen:
            form["guidance"] = previous.get("guidance") or ""
    return render_template("escalation.html", escalation=found, form=form)


@bp.get("/escalations/<escalation_id>/card")
@login_required
def escalation_card(escalation_id: str):
    found = escalation_service.get_escalation(escalation_id, founder())
    return render_card(found)


@bp.post("/escalations/<escalation_id>/resolve")
@login_required
def resolve(escalation_id: str):
    decision = request.form.get("decision")
    guidance = request.form.get("guidance")
    remember = request.form.get("remember") == "true"
    form = {"decision": decision, "guidance": guidance or "", "remember": remember}
    try:
        data = parse(ResolveRequest, {"decision": decision or "", "guidance": guidance, "remember": remember})
        resolved = escalation_service.resolve_escalation(escalation_id, current_founder_id(), data.decision,
                                                         data.guidance, via=VIA_CONSOLE, remember=data.remember)
    except ValidationFailed as error:
        current = escalation_service.get_escalation(escalation_id, founder())  # 404 for a foreign id
        errors = {e.field.split(".")[0]: e.message for e in error.errors}
        return _card_response(current, 422, form=form, errors=errors)
    except Conflict as error:
        return _card_response(error.escalation, 409, notice=error.detail)
    if is_htmx():
        notice = "Sent. The agent has your answer." + (
            " This error will be answered the same way from now on, in this project." if remember else "")
        return _card_response(resolved, 200, notice=notice)
    return redirect(url_for("pages.escalation", escalation_id=resolved.id), 303)


@bp.get("/settings")
@login_required
def settings():
    notice = "Saved." if request.args.get("saved") else None
    return _settings_page(200, notice=notice)


def _settings_page(status: int, **notifications):
    founder_id = current_founder_id()
    notifications.setdefault("form", notification_service.get_settings(founder_id).model_dump())
    return render_template("settings.html", rules=memory_service.list_rules(founder_id),
                           deliveries=notification_service.recent_deliveries(founder_id),
                           timezones=notification_timezones(), **notifications), status


@bp.post("/settings/notifications")
@login_required
def save_notification_settings():
    """The settings form (SPEC §11): the same document and checks as PUT /api/me/settings."""
    form = settings_form_document(request.form)
    try:
        document = notification_service.parse_settings(form)
    except ValidationFailed as error:
        errors = {e.field.split(".")[0]: e.message for e in error.errors}
        if is_htmx():
            return render_template("settings/_notifications.html", form=form, errors=errors,
                                   timezones=notification_timezones()), 422
        return _settings_page(422, form=form, errors=errors)
    notification_service.save_settings(current_founder_id(), document)
    if is_htmx():
        return render_template("settings/_notifications.html", form=document.model_dump(), notice="Saved.",
                               timezones=notification_timezones())
    return redirect(url_for("pages.settings", saved=1), 303)


@bp.post("/settings/rules/<rule_id>/revoke")
@login_required
def revoke_rule(rule_id: str):
    memory_service.revoke_rule(rule_id, current_founder_id())
    if is_htmx():
        return render_template("settings/_rule_revoked.html", rule_id=rule_id)
    return redirect(url_for("pages.settings"), 303)


def _card_response(escalation, status: int, **card):
    if is_htmx():
        return render_template("escalations/_card.html", escalation=escalation, **card), status
    return render_template("escalation.html", escalation=escalation, **card), status


# --- live updates (htmx SSE extension) -------------------------------------------------------------

@bp.get("/live")
@login_required
def inbox_live() -> Response:
    founder_id = current_founder_id()
    params = parse(InboxPageQuery, request.args.to_dict())
    render = functools.partial(console_frame, founder_id, page="inbox", in_project=params.project,
                               in_job=params.job, view=params.view or "full")
    frames = founder_event_stream(current_app._get_current_object(), founder_id, resume_point(), render)
    return sse_response(held_stream(stream_with_context(frames)))


@bp.get("/jobs/<job_id>/live")
@login_required
def job_live(job_id: str) -> Response:
    if not job_service.job_visible_to(job_id, founder()):
        raise NotFound(f"There is no job {job_id!r}.")
    render = functools.partial(console_frame, current_founder_id(), page="job")
    frames = job_event_stream(current_app._get_current_object(), job_id, resume_point(), render)
    return sse_response(held_stream(stream_with_context(frames)))


bp.add_app_template_filter(duration, "duration")
for _name, _clock_filter in CLOCK_FILTERS.items():  # the clock's words: "3 minutes ago", "by 14:05 UTC"
    bp.add_app_template_filter(_clock_filter, _name)
bp.add_app_template_filter(describe_event, "describe_event")
bp.add_app_template_global(escalation_option, "escalation_option")
bp.add_app_template_global(status_words, "status_words")
bp.add_app_template_global(signed_in_founder, "signed_in_founder")
bp.add_app_template_global(render_card, "render_card")
bp.add_app_template_global(form_csrf_token, "form_csrf_token")
bp.add_app_template_global(event_envelope, "event_envelope")
bp.add_app_template_global(memory_service.previous_decision, "previous_decision")
bp.add_app_template_global(rule_not_applied, "rule_not_applied")
bp.add_app_template_global(founder_rule, "founder_rule")
bp.add_app_template_filter(memory_service.readable_signature, "readable_signature")

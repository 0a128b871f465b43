"""The console's live updates: each stored event becomes one SSE frame of HTML that the
htmx SSE extension swaps in out-of-band — a new card at the top of the pending list, a
card decided elsewhere replaced in place, a line added to the job's timeline, the
pending count refreshed. Every piece is rendered by the same partials as the pages.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

from flask import g, has_request_context, render_template, session, url_for

from .auth import Principal
from .events import SSEEventType, event_envelope
from .services import escalations as escalation_service
from .services import memory

LIVE_EVENT = "update"  # the SSE event name the console listens for


def console_frame(founder_id: str, event, *, page: str, in_project: str | None = None, in_job: str | None = None,
                  view: str = "full") -> str:
    """One stored event as the SSE frame of a console page. On the inbox, `in_project` and
    `in_job` are its filters (a question outside them changes nothing there) and `view`
    its view (whole cards or one line each)."""
    from .cards import render_card  # noqa: PLC0415  (cards uses this module's helpers)

    g.console_founder_id = founder_id  # whose rules the card shows (a frame has no request)
    envelope = event_envelope(event)
    parts: list[str] = []
    escalation_id = envelope.get("escalation_id")
    if event.type in (SSEEventType.AGENT_WAITING_FOR_INPUT, SSEEventType.AGENT_ESCALATION_RESOLVED) and escalation_id:
        escalation = escalation_service.find_escalation(escalation_id, Principal("founder", founder_id))
        if escalation is not None and (page == "job" or in_scope(escalation, in_project, in_job)):
            card = "escalations/_summary.html" if page == "inbox" and view == "compact" else "escalations/_card.html"
            if event.type == SSEEventType.AGENT_WAITING_FOR_INPUT:
                # A rule may have answered it in the same breath: in the inbox it then belongs
                # with the decided cards (the job page lists all its cards together).
                target = "decided-cards" if page == "inbox" and escalation.status != "pending" else "pending-cards"
                parts.append(render_template("live/_new_card.html", escalation=escalation, target=target, card=card))
            else:
                parts.append(render_card(escalation, card, oob=True))
            if page == "job":  # the job page counts the job's questions
                pending_count = escalation_service.count_pending(founder_id, event.job_id)
            else:
                pending_count = escalation_service.count_pending(founder_id, in_job, in_project)
            parts.append(render_template("live/_pending_count.html", pending_count=pending_count))
    if page == "job":
        parts.append(render_template("live/_timeline_item.html", event=envelope))
    html = "\n".join(parts) or "<template></template>"
    data = "".join(f"data: {line}\n" for line in html.splitlines())
    return f"id: {event.id}\nevent: {LIVE_EVENT}\n{data}\n"


def in_scope(escalation: Any, project_id: str | None, job_id: str | None) -> bool:
    return (project_id is None or escalation.project_id == project_id) and (job_id is None or escalation.job_id == job_id)


# --- the inbox's filters ---------------------------------------------------------------------------

MAX_JOB_LINKS = 12  # the jobs with the most waiting questions; the others are counted


@dataclass(frozen=True)
class FilterLink:
    label: str
    pending: int
    href: str
    current: bool


@dataclass(frozen=True)
class InboxFilters:
    """What the inbox's filter bar shows: a link per project and per job with its number of
    waiting questions (the jobs of the chosen project, or all), and the two views."""

    project: str | None
    job: str | None
    view: str
    projects: list[FilterLink]
    jobs: list[FilterLink]
    more_jobs: int
    pending_in_scope: int

    @classmethod
    def of(cls, scopes: list, project: str | None, job: str | None, view: str) -> InboxFilters:
        by_project: Counter[str] = Counter()
        by_job: Counter[str] = Counter()
        for scope in scopes:
            by_project[scope.project_id] += scope.pending
            if project is None or scope.project_id == project:
                by_job[scope.job_id] += scope.pending
        for chosen, counts in ((project, by_project), (job, by_job)):
            if chosen is not None and chosen not in counts:
                counts[chosen] = 0  # a filter with nothing left waiting stays shown, and chosen
        projects = [FilterLink("All projects", sum(by_project.values()), inbox_url(None, None), project is None)]
        projects += [FilterLink(name, count, inbox_url(name, None), name == project)
                     for name, count in sorted(by_project.items(), key=lambda item: (-item[1], item[0]))]
        ranked = sorted(by_job.items(), key=lambda item: (item[0] != job, -item[1], item[0]))
        jobs = [FilterLink("All jobs", sum(by_job.values()), inbox_url(project, None), job is None)]
        jobs += [FilterLink(name, count, inbox_url(project, name), name == job) for name, count in ranked[:MAX_JOB_LINKS]]
        pending = sum(scope.pending for scope in scopes if in_scope(scope, project, job))
        return cls(project, job, view, projects, jobs, max(0, len(ranked) - MAX_JOB_LINKS), pending)

    def view_href(self, view: str) -> str:
        return inbox_url(self.project, self.job, view=view)

    def live_href(self, after: int) -> str:
        return url_for("pages.inbox_live", after=after, project=self.project, job=self.job, view=self.view)


def inbox_url(project: str | None, job: str | None, **more: str) -> str:
    return url_for("pages.inbox", project=project, job=job, **more)


# --- presentation helpers (Jinja filters) --------------------------------------------------------

def time_ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    if when is None:
        return ""
    now = now or dt.datetime.now(dt.UTC)
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def time_until(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """'within 3 hours', 'within 5 minutes', 'now'."""
    if when is None:
        return ""
    seconds = int((when - (now or dt.datetime.now(dt.UTC))).total_seconds())
    return "now" if seconds <= 0 else f"within {duration(dt.timedelta(seconds=seconds))}"


def duration(span: dt.timedelta) -> str:
    """A span in the largest whole unit a person says: '24 hours', '3 days', '90 seconds'."""
    seconds = max(0, int(round(span.total_seconds())))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        # Two units or more, or exactly one: "36 hours" rather than "2 days", "1 hour".
        if seconds >= 2 * size or (seconds == size and unit != "day"):
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def clock_time(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """'14:05 UTC' today, '3 Dec 14:05 UTC' on another day."""
    if when is None:
        return ""
    when = when.astimezone(dt.UTC)
    today = (now or dt.datetime.now(dt.UTC)).date()
    return when.strftime("%H:%M UTC") if when.date() == today else f"{when.day} {when:%b %H:%M} UTC"


def day_month(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """'3 March' (this year), '3 March 2025' (another)."""
    if when is None:
        return ""
    this_year = (now or dt.datetime.now(dt.UTC)).year
    return f"{when.day} {when:%B}" + ("" if when.year == this_year else f" {when.year}")


STATUS_WORDS = {"pending": "Waiting for you", "expired": "Expired: no decision", "skipped": "Withdrawn by the agent"}
DECIDER_WORDS = {"expiry": "No answer: safe default applied", "rule": "Answered by your rule"}


def status_words(escalation: Any) -> str:
    """A card's status line: 'Waiting for you', 'Decided', 'Answered by your rule', …"""
    status = escalation.status
    if status == "resolved":
        return DECIDER_WORDS.get(escalation.decided_by, "Decided")
    return STATUS_WORDS.get(status, status)


# --- decision memory on the card (SPEC §12) --------------------------------------------------------

def _founder_rules(founder_id: str) -> dict[tuple[str, str], Any]:
    """The founder's rules, read once per request (or live frame), by (project, signature)."""
    cache = g.setdefault("console_founder_rules", {})
    if founder_id not in cache:
        cache[founder_id] = memory.rules_by_key(founder_id)
    return cache[founder_id]


def rule_for(escalation: Any) -> Any:
    """The founder's rule for this escalation's project and error (None without one)."""
    return _founder_rules(escalation.founder_id).get((escalation.project_id, escalation.error_signature))


def rule_not_applied(escalation: Any) -> str | None:
    """Why the founder's rule for this error did not answer this pending question, if it did not."""
    if escalation.status != "pending":
        return None
    rule = rule_for(escalation)
    return memory.why_rule_did_not_apply(rule, escalation) if rule is not None else None


def founder_rule(rule_id: Any) -> Any:
    """The signed-in founder's rule with this id (None once revoked)."""
    founder_id = session.get("founder_id") if has_request_context() else g.get("console_founder_id")
    if rule_id is None or founder_id is None:
        return None
    return next((rule for rule in _founder_rules(founder_id).values() if rule.id == rule_id), None)


def describe_event(envelope: dict[str, Any]) -> str:
    """One line of the job timeline, in words a founder reads."""
    kind = envelope.get("type")
    if kind == SSEEventType.AGENT_RETRYING:
        attempt = envelope.get("attempt")
        error = envelope.get("error_type")
        return "Retrying" + (f" (attempt {attempt})" if attempt is not None else "") + (f" after {error}" if error else "")
    if kind == SSEEventType.AGENT_WAITING_FOR_INPUT:
        return f"Asked you: {envelope.get('plain_english_problem', '')}"
    if kind == SSEEventType.AGENT_ESCALATION_RESOLVED:
        if envelope.get("status") == "skipped":
            reason = envelope.get("reason")
            return "The agent withdrew its question" + (f": {reason}" if reason else "")
        guidance = envelope.get("guidance")
        chosen = envelope.get("resolution_label") or envelope.get("resolution")
        if envelope.get("status") == "expired":
            return "No answer in time: the question expired without a decision"
        if envelope.get("decided_by") == "expiry":
            return f"No answer in time: the agent went ahead with its safe default, {chosen}"
        if envelope.get("decided_by") == "rule":
            return f"Answered by your rule: {chosen}" + (f" — “{guidance}”" if guidance else "")
        via = {"console": " (in the console)", "api": " (through the API)", "slack": " (in Slack)"}.get(
            envelope.get("decided_via"), "")
        return f"You decided: {chosen}{via}" + (f" — “{guidance}”" if guidance else "")
    if kind == SSEEventType.AGENT_BUILD_PAUSED:
        reason = envelope.get("reason")
        return "Build paused" + (f": {reason}" if reason else "")
    detail = envelope.get("reason") or envelope.get("stage") or envelope.get("phase") or envelope.get("note")
    label = (kind or "event").replace(".", " ").replace("_", " ").capitalize()
    return f"{label}: {detail}" if detail else label

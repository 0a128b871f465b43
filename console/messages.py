"""What a notification says (SPEC §11): the e-mail (multipart text + HTML, standard `email`
package) and the Slack message (Block Kit), of a question, its reminder, a digest, and the
Slack message's update once a button answered it.

Every agent string is text: the HTML part is rendered by Jinja with autoescaping, Slack's
blocks carry it as `plain_text` (never parsed for links or mentions) and the `text`
fallback, which Slack does parse, has `&`, `<` and `>` escaped. The raw error message is never
stored, so it cannot be in a message either.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import email.utils
import zoneinfo
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, render_template

from .models import EXPIRED, KIND_REMINDER, RESOLVED, SKIPPED, escalation_option
from .services import notifications as service
from .text import one_line

SUBJECT_LINE = 80  # characters of the problem's first line in a subject
PROVIDE_GUIDANCE = "provide_guidance"


# --- shared wording -------------------------------------------------------------------------------

def first_line(text: str, limit: int = SUBJECT_LINE) -> str:
    """The first line of a text, cut at a word to `limit` characters (with an ellipsis), with
    no control character left in it."""
    line = next((one_line(part) for part in (text or "").splitlines() if one_line(part)), "")
    return shorten(line, limit)


def shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,.;:-") + "…"


def zone(settings: Any) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(getattr(settings, "timezone", None) or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def local_time(when: dt.datetime, settings: Any) -> str:
    """`Thu 3 Dec, 14:05 (Europe/Berlin)`: a moment as the founder reads it."""
    tz = zone(settings)
    local = when.astimezone(tz)
    return f"{local:%a} {local.day} {local:%b}, {local:%H:%M} ({tz.key})"


def needs_guidance(option: dict[str, Any]) -> bool:
    return option.get("value") == PROVIDE_GUIDANCE or bool(option.get("requires_guidance"))


def deadline_text(escalation: Any, settings: Any) -> str | None:
    """What happens at the deadline, when there is one."""
    if escalation.expires_at is None:
        return None
    when = local_time(escalation.expires_at, settings)
    default = escalation_option(escalation, escalation.on_expiry)
    if escalation.on_expiry:
        label = default["label"] if default else escalation.on_expiry
        return f"If nobody answers by {when}, the agent goes ahead with “{label}”, its safe default."
    return f"If nobody answers by {when}, the question expires and the agent carries on without a decision."


def settled_text(escalation: Any) -> str:
    """What became of a question, for the Slack message's update."""
    if escalation.status == RESOLVED:
        option = escalation_option(escalation, escalation.founder_decision)
        label = option["label"] if option else escalation.founder_decision
        if escalation.decided_by == "expiry":
            return f"Nobody answered in time: the agent went ahead with “{label}”, its safe default."
        if escalation.decided_by == "rule":
            return f"Answered by your remembered decision: “{label}”."
        where = {"slack": "from Slack", "console": "in the console", "api": "in the app"}.get(escalation.decided_via, "")
        return f"Decided {where}: “{label}”. The agent has the answer.".replace("  ", " ")
    if escalation.status == SKIPPED:
        return "The agent withdrew this question: there is nothing left to decide."
    if escalation.status == EXPIRED:
        return "Nobody answered in time: the question expired without a decision."
    return "Still waiting for an answer."


@dataclasses.dataclass(frozen=True)
class Choice:
    value: str
    label: str
    description: str
    recommended: bool
    guidance: bool
    escalation_id: Any
    founder_id: str

    @functools.cached_property
    def link(self) -> str:
        """The e-mail's link (one token, however often a message shows it): decides this one question with this option (SPEC §16)."""
        return service.decision_link(self.escalation_id, self.founder_id, self.value)

    @property
    def card_link(self) -> str:
        """Slack's URL button: the card's console page with this option chosen (a session needed)."""
        return service.card_link(self.escalation_id, self.value)


def choices(escalation: Any) -> list[Choice]:
    """The options, each with its links (made when a message uses them: one token per link)."""
    return [Choice(option["value"], option.get("label") or option["value"], option.get("description") or "",
                   bool(option.get("recommended")), needs_guidance(option), escalation.id, escalation.founder_id)
            for option in escalation.options or []]


@dataclasses.dataclass(frozen=True)
class Question:
    """One question as a message shows it."""
    escalation: Any
    kind: str
    subject_line: str
    deadline: str | None
    choices: list[Choice]
    open_link: str

    @property
    def is_reminder(self) -> bool:
        return self.kind == KIND_REMINDER


def question(escalation: Any, kind: str, settings: Any) -> Question:
    return Question(escalation, kind, first_line(escalation.plain_english_problem), deadline_text(escalation, settings),
                    choices(escalation), service.card_link(escalation.id))


# --- e-mail ---------------------------------------------------------------------------------------

def mail_domain() -> str:
    """The right-hand side of Message-IDs: the sender's domain (else the console's host)."""
    _, address = email.utils.parseaddr(str(current_app.config["MAIL_FROM"]))
    domain = address.rpartition("@")[2] if "@" in address else ""
    return domain or urlsplit(str(current_app.config["BASE_URL"])).hostname or "localhost"


def message_id(escalation_id: Any) -> str:
    """The one Message-ID of an escalation's question; its reminder answers it."""
    return f"<escalation-{escalation_id}@{mail_domain()}>"


def _envelope(message: EmailMessage, to: str, subject: str, at: dt.datetime, founder_id: str) -> None:
    message["From"] = str(current_app.config["MAIL_FROM"])
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(at.astimezone(dt.UTC))
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    message["List-Unsubscribe"] = f"<{service.unsubscribe_link(founder_id)}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058


def question_email(escalation: Any, kind: str, settings: Any, at: dt.datetime) -> EmailMessage:
    """A question (or its reminder) as one multipart/alternative message."""
    shown = question(escalation, kind, settings)
    subject = one_line(f"[{escalation.project_id}] {shown.subject_line}")  # a header is one line (SPEC §16)
    context = {"q": shown, "settings_link": service.settings_link(),
               "unsubscribe_link": service.unsubscribe_link(escalation.founder_id)}
    message = EmailMessage(policy=SMTP)
    _envelope(message, settings.email, ("Re: " + subject) if shown.is_reminder else subject, at, escalation.founder_id)
    if shown.is_reminder:
        message["Message-ID"] = f"<escalation-{escalation.id}.reminder@{mail_domain()}>"
        message["In-Reply-To"] = message_id(escalation.id)
        message["References"] = message_id(escalation.id)
    else:
        message["Message-ID"] = message_id(escalation.id)
    message.set_content(render_template("mail/question.txt", **context))
    message.add_alternative(render_template("mail/question.html", **context), subtype="html")
    return message


def digest_email(items: list[tuple[Any, str]], settings: Any, founder_id: str, at: dt.datetime,
                 since: dt.datetime | None, digest_key: str) -> EmailMessage:
    """Several questions (and reminders), oldest first, in one message."""
    shown = [question(escalation, kind, settings) for escalation, kind in items]
    projects = list(dict.fromkeys(q.escalation.project_id for q in shown))
    count = len(shown)
    subject = one_line(f"[{shorten(', '.join(projects), 60)}] "
                       + (f"{count} questions are waiting for you" if count > 1 else shown[0].subject_line))
    context = {"questions": shown, "since": local_time(since, settings) if since else None,
               "settings_link": service.settings_link(), "unsubscribe_link": service.unsubscribe_link(founder_id)}
    message = EmailMessage(policy=SMTP)
    _envelope(message, settings.email, subject, at, founder_id)
    message["Message-ID"] = f"<digest-{digest_key}@{mail_domain()}>"
    message.set_content(render_template("mail/digest.txt", **context))
    message.add_alternative(render_template("mail/digest.html", **context), subtype="html")
    return message


# --- Slack ----------------------------------------------------------------------------------------

def slack_escape(text: str) -> str:
    """Slack's own escaping for text it parses (the fallback): no links, mentions or markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": shorten(text, limit) or " ", "emoji": False}


def _question_blocks(escalation: Any, kind: str, settings: Any) -> list[dict[str, Any]]:
    heading = "Reminder: still waiting for you" if kind == KIND_REMINDER else "Your agent has a question"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(one_line(f"[{escalation.project_id}] {heading}"), 150)},
        {"type": "section", "text": _plain(escalation.plain_english_problem, 3000)},
        {"type": "section", "text": _plain(f"Recommended: {escalation.recommended_action}", 3000)},
    ]
    deadline = deadline_text(escalation, settings)
    context = [_plain(one_line(f"{escalation.error_type} · job {escalation.job_id}"), 300)]
    if deadline:
        context.insert(0, _plain(deadline, 300))
    blocks.append({"type": "context", "elements": context})
    return blocks


def slack_question(escalation: Any, kind: str, settings: Any, *, interactive: bool) -> dict[str, Any]:
    """The message of a question or reminder: one button per option. Url buttons open the card
    with that option chosen; with a signing secret (interactive) an option that needs no
    guidance decides in place instead (action_id `decide:<option>`, value `<id>:<option>`)."""
    shown = question(escalation, kind, settings)
    buttons: list[dict[str, Any]] = []
    for choice in shown.choices:
        button: dict[str, Any] = {"type": "button", "text": _plain(choice.label, 75)}
        if interactive and not choice.guidance:
            button.update(action_id=f"decide:{choice.value}"[:255], value=f"{escalation.id}:{choice.value}")
        else:
            button.update(action_id=f"open:{choice.value}"[:255], url=choice.card_link)
        if choice.recommended:
            button["style"] = "primary"
        buttons.append(button)
    buttons.append({"type": "button", "text": _plain("Open in the console", 75), "action_id": "open", "url": shown.open_link})
    prefix = "Reminder: " if kind == KIND_REMINDER else "New question: "
    return {
        "text": slack_escape(one_line(f"[{escalation.project_id}] {prefix}{shown.subject_line}")),
        "blocks": _question_blocks(escalation, kind, settings)
        + [{"type": "actions", "block_id": f"escalation:{escalation.id}", "elements": buttons}],
    }


def slack_summary(items: list[tuple[Any, str]], settings: Any) -> dict[str, Any]:
    """Past the hourly cap (SPEC §16): the rest of the hour's questions in one message, each a
    line, with one plain link to the console (no option buttons: the founder answers there)."""
    count = len(items)
    heading = f"{count} more questions are waiting for you" if count > 1 else "One more question is waiting for you"
    lines = [one_line(f"[{escalation.project_id}] " + ("Reminder: " if kind == KIND_REMINDER else "")
                      + first_line(escalation.plain_english_problem)) for escalation, kind in items]
    shown = lines[:20] + ([f"… and {count - 20} more"] if count > 20 else [])
    return {
        "text": slack_escape(f"{heading} (more than your hourly limit of messages)"),
        "blocks": [
            {"type": "header", "text": _plain(heading, 150)},
            {"type": "section", "text": _plain("\n".join(f"• {line}" for line in shown), 3000)},
            {"type": "actions", "elements": [{"type": "button", "text": _plain("Open the console", 75),
                                              "action_id": "open", "url": service.inbox_link()}]},
        ],
    }


def slack_settled(escalation: Any, settings: Any, note: str | None = None) -> dict[str, Any]:
    """The message once answered: the question without its buttons, and what became of it."""
    outcome = note or settled_text(escalation)
    blocks = _question_blocks(escalation, "question", settings)[:2] + [
        {"type": "section", "text": _plain(outcome, 3000)}]
    return {"replace_original": True, "text": slack_escape(one_line(f"[{escalation.project_id}] {outcome}")),
            "blocks": blocks}

"""Slack's interactive buttons (SPEC §11): a click decides through the same service as the
console (`resolve_escalation(..., via="slack")`: first writer wins, 409 rules), when the Slack
user who clicked is the one the founder linked (`slack_user_id` in their settings).

The request's signature is checked by the route (slack_sdk's SignatureVerifier) before any of
this runs. The answer is a message for Slack: the original replaced with the outcome, or an
ephemeral refusal that changes nothing; after a decision the original message is also updated
through the payload's `response_url`, by the worker (a delivery of kind slack_update).
"""
from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from ..auth import AGENT
from ..errors import Conflict, NotFound, ValidationFailed
from ..messages import settled_text, slack_escape, slack_settled
from ..models import VIA_SLACK, escalation_option
from . import escalations as escalation_service
from . import notifications as notification_service

DECIDE = "decide:"


def _ephemeral(text: str) -> dict[str, Any]:
    return {"response_type": "ephemeral", "replace_original": False, "text": text}


def usable_response_url(url: Any) -> str | None:
    """Slack's response_url: https on a slack.com host (any URL the guard allows with
    CONSOLE_WEBHOOK_ALLOW_PRIVATE, for tests and development)."""
    if not isinstance(url, str) or not url:
        return None
    parts = urlsplit(url)
    if notification_service.allow_private():
        return url if parts.scheme in ("http", "https") and parts.hostname else None
    host = parts.hostname or ""
    return url if parts.scheme == "https" and (host == "slack.com" or host.endswith(".slack.com")) else None


def handle_action(payload: Any) -> dict[str, Any]:
    """One verified `block_actions` payload → the JSON answered to Slack."""
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return _ephemeral("This console only handles its own question buttons.")
    user_id = (payload.get("user") or {}).get("id") if isinstance(payload.get("user"), dict) else None
    actions = payload.get("actions") if isinstance(payload.get("actions"), list) else []
    action = actions[0] if actions and isinstance(actions[0], dict) else {}
    action_id, value = action.get("action_id"), action.get("value")
    if not isinstance(action_id, str) or not action_id.startswith(DECIDE):
        return {}  # a url button (it opened the console) or something else: nothing to do here
    escalation_id, _, decision = (value if isinstance(value, str) else "").partition(":")
    try:
        escalation = escalation_service.find_escalation(uuid.UUID(escalation_id), AGENT)
    except ValueError:
        escalation = None
    if escalation is None or not decision:
        return _ephemeral("This question no longer exists.")
    settings = notification_service.settings_row(escalation.founder_id)
    if settings is None or not settings.slack_user_id or not isinstance(user_id, str) or user_id != settings.slack_user_id:
        return _ephemeral("Only the founder this question was sent to can answer it here (the Slack account "
                          "linked in the console's settings). Nothing was decided.")
    option = escalation_option(escalation, decision)
    label = option["label"] if option else decision
    open_link = notification_service.card_link(escalation.id, decision)  # a plain console link (SPEC §16)
    if escalation_service.guidance_required(escalation, decision):
        return _ephemeral(f"“{slack_escape(label)}” needs a few words of guidance: <{open_link}|answer it in the console>.")
    try:
        decided = escalation_service.resolve_escalation(escalation.id, escalation.founder_id, decision, None,
                                                        via=VIA_SLACK)
        message = slack_settled(decided, settings, f"You chose “{label}” from Slack. The agent has your answer.")
    except Conflict as conflict:
        current = conflict.escalation or escalation
        decided = None
        message = slack_settled(current, settings, f"{settled_text(current)} (It was already decided; "
                                                   "your click changed nothing.)")
    except ValidationFailed:
        return _ephemeral(f"“{slack_escape(label)}” cannot be chosen from Slack: <{open_link}|answer it in the console>.")
    except NotFound:
        return _ephemeral("This question no longer exists.")
    response_url = usable_response_url(payload.get("response_url"))
    if response_url:
        notification_service.enqueue_slack_update(decided or escalation, response_url)
    return message

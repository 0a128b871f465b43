"""The pages and endpoints that messages lead to (SPEC §11): an e-mail's option links, its
one-click unsubscribe, and Slack's interactive buttons.

* `GET /mail/open?t=` — a signed option link. A page with one button (mail scanners and link
  previewers GET links, so a GET never signs in and never decides); its POST (CSRF) spends the
  link, signs the founder in and opens the card with that option chosen. Already signed in as
  that founder: straight to the card.
* `POST /mail/unsubscribe?t=` — RFC 8058 one-click: e-mail off for the founder the signed
  token names, without a session or CSRF token (mail providers post it themselves).
* `POST /integrations/slack/actions` — Slack's form-encoded `payload`, only with a valid
  `X-Slack-Signature` (slack_sdk's SignatureVerifier: HMAC-SHA256 of `v0:{timestamp}:{body}`,
  the timestamp within 5 minutes); anything else 401.
"""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode

from flask import Blueprint, Flask, current_app, jsonify, redirect, render_template, request, url_for
from slack_sdk.signature import SignatureVerifier

from ..auth import AGENT, current_founder_id, start_console_session
from ..services import escalations as escalation_service
from ..services import notifications as service
from ..services import slack as slack_service

bp = Blueprint("notify", __name__)


def _card_url(link: dict[str, str]) -> str:
    query = {"decision": link["decision"]} if link["decision"] else {}
    return url_for("pages.escalation", escalation_id=link["escalation_id"]) + (f"?{urlencode(query)}" if query else "")


def _refused(message: str, next_url: str | None = None, status: int = 400):
    return render_template("notify/link_refused.html", message=message, next_url=next_url), status


def _option_label(link: dict[str, str]) -> tuple[object | None, str | None]:
    escalation = escalation_service.find_escalation(link["escalation_id"], AGENT)
    if escalation is None or escalation.founder_id != link["founder_id"]:
        return None, None
    option = next((o for o in escalation.options or [] if o.get("value") == link["decision"]), None)
    return escalation, (option or {}).get("label")


@bp.get("/mail/open")
def open_link():
    token = request.args.get("t", "")
    link = service.read_option_link(token)
    if link is None:
        return _refused("This link has expired (e-mail links work for 7 days) or is not valid. Sign in to "
                        "see your questions.")
    if current_founder_id() == link["founder_id"]:
        return redirect(_card_url(link), 303)
    escalation, label = _option_label(link)
    if escalation is None:
        return _refused("This question no longer exists.")
    if service.option_link_spent(link["nonce"]):
        return _refused("This link has signed someone in once already. Sign in, and the question opens with "
                        "the same answer chosen.", next_url=_card_url(link))
    return render_template("notify/open.html", token=token, escalation=escalation, label=label)


@bp.post("/mail/open")
def open_link_submit():
    link = service.read_option_link(request.form.get("t", ""))
    if link is None:
        return _refused("This link has expired (e-mail links work for 7 days) or is not valid. Sign in to "
                        "see your questions.")
    if current_founder_id() == link["founder_id"]:
        return redirect(_card_url(link), 303)
    if not service.spend_option_link(link):
        return _refused("This link has signed someone in once already. Sign in, and the question opens with "
                        "the same answer chosen.", next_url=_card_url(link))
    start_console_session(link["founder_id"])
    return redirect(_card_url(link), 303)


@bp.get("/mail/unsubscribe")
def unsubscribe_page():
    token = request.args.get("t", "")
    if service.read_unsubscribe(token) is None:
        return _refused("This unsubscribe link is not valid.")
    return render_template("notify/unsubscribe.html", token=token, done=False)


@bp.post("/mail/unsubscribe")
def unsubscribe():
    token = request.args.get("t") or request.form.get("t", "")
    founder_id = service.read_unsubscribe(token)
    if founder_id is None:
        return _refused("This unsubscribe link is not valid.")
    service.turn_email_off(founder_id)
    return render_template("notify/unsubscribe.html", token=token, done=True)


def _slack_refusal(detail: str):
    return jsonify({"error": "invalid_signature", "detail": detail}), 401


@bp.post("/integrations/slack/actions")
def slack_actions():
    secret = current_app.config.get("SLACK_SIGNING_SECRET")
    if not secret:
        return jsonify({"error": "not_configured",
                        "detail": "Slack's interactive buttons are off (no CONSOLE_SLACK_SIGNING_SECRET)."}), 404
    body = request.get_data(cache=True)
    try:
        valid = SignatureVerifier(str(secret)).is_valid(
            body=body, timestamp=request.headers.get("X-Slack-Request-Timestamp"),
            signature=request.headers.get("X-Slack-Signature"))
    except (ValueError, TypeError, UnicodeDecodeError):  # a timestamp that is not a number, a body not UTF-8
        valid = False
    if not valid:
        return _slack_refusal("The request is not signed by this app's Slack signing secret, or its timestamp "
                              "is more than 5 minutes off.")
    try:
        payload = json.loads(parse_qs(body.decode("utf-8")).get("payload", [""])[0])
    except (ValueError, UnicodeDecodeError):
        return jsonify({"error": "bad_payload", "detail": "Expected a form field `payload` holding JSON."}), 400
    return jsonify(slack_service.handle_action(payload))


def init_app(app: Flask) -> None:
    from ..extensions import csrf  # noqa: PLC0415

    app.register_blueprint(bp)
    # Authenticated by what they carry (a signed token, Slack's signature), never by a cookie.
    csrf.exempt(unsubscribe)
    csrf.exempt(slack_actions)

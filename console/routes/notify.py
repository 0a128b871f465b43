"""The pages and endpoints that messages lead to (SPEC §11, §16): an e-mail's option links,
its one-click unsubscribe, and Slack's interactive buttons.

* `GET /mail/open?t=` — an e-mail's option link. A page that needs no session and shows that
  one question with the link's option chosen (mail scanners and link previewers GET links, so
  a GET never decides). Its Send (`POST /mail/open`, the link's token and a CSRF token derived
  from it) decides that question only, through the same rules as the console, with
  `decided_via: "email"`, and spends the link. It sets no session cookie and signs nobody in:
  a forwarded e-mail can answer one question, never open the account. A founder already
  signed in on this browser goes straight to the card in the console.
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

from ..auth import AGENT, current_founder_id
from ..errors import Conflict, ValidationFailed
from ..models import PENDING, VIA_EMAIL, escalation_option
from ..schemas import ResolveRequest, parse
from ..services import escalations as escalation_service
from ..services import notifications as service
from ..services import slack as slack_service

bp = Blueprint("notify", __name__)

LINK_NOT_VALID = ("This link has expired (e-mail links work for 7 days) or is not valid, so it changes nothing. "
                  "Sign in to see your questions.")


def _card_url(link: dict[str, str]) -> str:
    query = {"decision": link["decision"]} if link["decision"] else {}
    return url_for("pages.escalation", escalation_id=link["escalation_id"]) + (f"?{urlencode(query)}" if query else "")


def _refused(message: str, next_url: str | None = None, status: int = 400):
    return render_template("notify/link_refused.html", message=message, next_url=next_url), status


def _linked(token: str):
    """(link, escalation, option) of a decision link whose question exists and is the link's
    founder's; or a refusal page."""
    link = service.read_option_link(token)
    if link is None:
        return None, _refused(LINK_NOT_VALID)
    escalation = escalation_service.find_escalation(link["escalation_id"], AGENT)
    if escalation is None or escalation.founder_id != link["founder_id"]:
        return None, _refused("This question no longer exists, or the link is not for it.", status=404)
    option = escalation_option(escalation, link["decision"]) if escalation.options else None
    if not link["decision"] or (escalation.options and option is None):
        # an "open the question" link of an earlier version: it decides nothing
        return None, _refused("This link only opens the question, and that needs you to sign in.",
                              next_url=_card_url(link), status=403)
    return (link, escalation, option), None


def _page(link, escalation, option, status: int = 200, **shown):
    return render_template("notify/decide.html", escalation=escalation, option=option, decision=link["decision"],
                           token=request.values.get("t", ""), form_token=service.decision_form_token(link),
                           guidance_needed=escalation_service.guidance_required(escalation, link["decision"]),
                           **shown), status


@bp.get("/mail/open")
def open_link():
    found, refusal = _linked(request.args.get("t", ""))
    if refusal:
        return refusal
    link, escalation, option = found
    if current_founder_id() == link["founder_id"]:
        return redirect(_card_url(link), 303)
    if escalation.status != PENDING or service.option_link_spent(link["nonce"]):
        return _page(link, escalation, option)  # settled, by any face: the page says how
    return _page(link, escalation, option, form={"guidance": ""})


@bp.post("/mail/open")
def open_link_submit():
    found, refusal = _linked(request.form.get("t", ""))
    if refusal:
        return refusal
    link, escalation, option = found
    if not service.decision_form_token_valid(link, request.form.get("form_token", "")):
        return _refused("This form did not come from the link's page. Open the link from your e-mail again.")
    guidance = request.form.get("guidance")
    form = {"guidance": guidance or ""}
    if escalation.status != PENDING or service.option_link_spent(link["nonce"]):
        return _page(link, escalation, option, 409, notice=_settled_notice(escalation))
    try:
        data = parse(ResolveRequest, {"decision": link["decision"], "guidance": guidance})
        decided = escalation_service.resolve_escalation(escalation.id, link["founder_id"], data.decision,
                                                        data.guidance, via=VIA_EMAIL)
    except ValidationFailed as error:
        errors = {e.field.split(".")[0]: e.message for e in error.errors}
        return _page(link, escalation, option, 422, form=form, errors=errors)
    except Conflict as error:
        return _page(link, error.escalation, option, 409, notice=error.detail)
    if not service.spend_option_link(link):  # a second Send raced this one: it decided first
        return _page(link, decided, option, 409, notice="This link has been used already: it decides once.")
    return _page(link, decided, option, decided_now=True)


def _settled_notice(escalation) -> str:
    if escalation.status == PENDING:
        return "This link has been used already: it decides once."
    return escalation_service.describe_settled(escalation)


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
    # Authenticated by what they carry (a signed token, Slack's signature), never by a cookie; the
    # decision link's form has a CSRF token of its own, derived from the link (it sets no cookie).
    csrf.exempt(unsubscribe)
    csrf.exempt(slack_actions)
    csrf.exempt(open_link_submit)

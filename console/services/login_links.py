"""One-click sign-in links (SPEC §4): short-lived, signed, and single-use.

A link carries the founder id and a random nonce, signed with the app's secret key and
timestamped. Opening it shows a page with one button (link previewers only GET); the
button's POST spends the link: its nonce is stored in `spent_login_links` in the same
statement that checks it was not spent before, so of two concurrent clicks exactly one
signs in.
"""
from __future__ import annotations

import datetime as dt
import secrets

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import delete, select

from ..database import read_rows, write_transaction
from ..models import SpentLoginLink, utcnow
from .jobs import dialect_insert

_SALT = "console-login-link"


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_SALT)


def new_login_token(founder_id: str) -> str:
    """The signed token of a new link for this founder."""
    return _serializer().dumps({"founder_id": founder_id, "nonce": secrets.token_urlsafe(24)})


def _read(token: str) -> tuple[str, str] | None:
    try:
        data = _serializer().loads(token, max_age=current_app.config["LOGIN_LINK_MAX_AGE"])
    except (SignatureExpired, BadSignature):
        return None
    if not isinstance(data, dict):
        return None
    founder_id, nonce = data.get("founder_id"), data.get("nonce")
    if not isinstance(founder_id, str) or not founder_id or not isinstance(nonce, str) or not nonce:
        return None
    return founder_id, nonce


def link_founder(token: str) -> str | None:
    """The founder a link is for, if it is signed, unexpired and not spent yet."""
    read = _read(token)
    if read is None:
        return None
    founder_id, nonce = read
    spent = read_rows(select(SpentLoginLink.nonce).where(SpentLoginLink.nonce == nonce))
    return None if spent else founder_id


def spend_login_link(token: str) -> str | None:
    """Spend a link: the founder id it signs in, or None when it is not valid, expired, or
    was spent before (by an earlier or a concurrent click)."""
    read = _read(token)
    if read is None:
        return None
    founder_id, nonce = read
    now = utcnow()
    max_age = dt.timedelta(seconds=current_app.config["LOGIN_LINK_MAX_AGE"])
    spend = (dialect_insert(SpentLoginLink)
             .values(nonce=nonce, founder_id=founder_id, spent_at=now)
             .on_conflict_do_nothing(index_elements=["nonce"])
             .returning(SpentLoginLink.nonce))
    with write_transaction() as session:
        spent_now = session.execute(spend).first() is not None  # nothing returned: spent before
        # A nonce older than a link's lifetime can never be presented again: forget it.
        session.execute(delete(SpentLoginLink).where(SpentLoginLink.spent_at < now - 2 * max_age))
    return founder_id if spent_now else None

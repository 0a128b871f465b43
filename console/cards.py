"""Cards rendered once per version of their row (issue 15: the inbox's server time).

A whole card is 230–300 µs of Jinja, and an inbox shows up to 100 of them: rendering was
four fifths of the inbox's time. What a card shows depends on its row, on the founder's
rules, on where the app is mounted, and on two things that change while the row does not:
the clock ("3 minutes ago", "within 2 hours", "by 14:05 UTC") and the session's CSRF token.

So a card is rendered with markers where those two go and kept, per app, in a bounded LRU
cache keyed by everything else; each request fills the markers in (one regular-expression
pass over the cached text). The markers carry a nonce drawn per process, so no text an agent
wrote can pass for one. A card rendered with the founder's input, errors or a notice (the
answer to a post) is never cached: it goes through the template as it is.
"""
from __future__ import annotations

import datetime as dt
import re
import secrets
from typing import Any, Callable

from cachetools import LRUCache
from flask import g, has_request_context, render_template, request
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup, escape
from sqlalchemy import Row

from .caches import app_cache
from .live import clock_time, day_month, founder_rule, rule_for, time_ago, time_until

CARD = "escalations/_card.html"
SUMMARY = "escalations/_summary.html"
CACHED_CARDS = 4096  # per app and process; a card is 2–5 KiB

_NONCE = secrets.token_hex(8)
_MARKER = re.compile("\x02" + _NONCE + r"(\w+)\x1f([^\x03]*)\x03")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _rendering_for_the_cache() -> bool:
    return bool(g.get("console_card_markers"))


def _marker(kind: str, value: str = "") -> Markup:
    return Markup(f"\x02{_NONCE}{kind}\x1f{value}\x03")


def form_csrf_token() -> str:
    """The CSRF token of the card's form (a marker while the card is rendered for the cache)."""
    return _marker("csrf") if _rendering_for_the_cache() else generate_csrf()


# The clock's words, by the kind of marker that stands for them: each takes (when, now).
_FILLERS: dict[str, Callable[[dt.datetime, dt.datetime], str]] = {
    "ago": time_ago, "until": time_until, "clock": clock_time, "day": day_month,
}


def _clock_filter(kind: str, words: Callable[..., str]) -> Callable[[dt.datetime | None], str]:
    """A Jinja filter that writes `words(when)`, or its marker while a card is rendered for
    the cache."""
    def clock_filter(when: dt.datetime | None) -> str:
        if when is not None and _rendering_for_the_cache():
            return _marker(kind, when.isoformat())
        return words(when)

    clock_filter.__name__ = words.__name__
    return clock_filter


# The template filters of the clock's words (registered by routes/pages.py).
CLOCK_FILTERS = {words.__name__: _clock_filter(kind, words) for kind, words in _FILLERS.items()}


def render_card(escalation: Any, partial: str = CARD, *, oob: bool = False) -> Markup:
    """The card (or, with `partial=SUMMARY`, its one-line summary) of a row, from the cache
    when this version of the row was rendered before."""
    if not _cacheable(escalation):  # a model instance: no cheap way to tell its version
        return Markup(render_template(partial, escalation=escalation, oob=oob))
    cache = _cards()
    key = _card_key(escalation, partial, oob)
    html = cache.get(key)
    if html is None:
        html = cache[key] = _render_with_markers(escalation, partial, oob)
    return fill_in(html)


def render_cards(items: list[Any], partial: str = CARD, *,
                 load: Callable[[list], dict[Any, Any]] | None = None) -> list[Markup]:
    """The cards of a page. `items` are whole rows, or (services.escalations.founder_card_page
    on PostgreSQL) card versions, whose whole rows `load(ids)` reads only for the cards that
    are not cached yet (one statement for all of them)."""
    cache = _cards()
    keys = [_card_key(item, partial, False) for item in items]
    found = [cache.get(key) for key in keys]
    missing = [item.id for item, html in zip(items, found) if html is None and not _whole(item)]
    loaded = load(missing) if missing and load is not None else {}
    cards, token = [], []
    for item, html in zip(items, found):
        if html is None:
            row = item if _whole(item) else loaded.get(item.id)
            if row is None:
                continue  # deleted since the page was read
            html = _render_with_markers(row, partial, False)
            cache[_card_key(row, partial, False)] = html  # under the version of what was rendered
        cards.append(fill_in(html, token))
    return cards


def _cacheable(escalation: Any) -> bool:
    return isinstance(escalation, Row)


def _whole(item: Any) -> bool:
    return hasattr(item, "plain_english_problem")


def _cards():
    return app_cache("console_cards", lambda: LRUCache(CACHED_CARDS))


def _card_key(escalation: Any, partial: str, oob: bool) -> tuple:
    """Everything a card's text depends on but the clock and the CSRF token: the row's version
    (computed by the database, or the row itself), the founder's rule for its error, the rule
    that answered it, the partial, and where the app is mounted."""
    version = getattr(escalation, "card_version", None) or repr(tuple(escalation))
    rule = rule_for(escalation) if escalation.status == "pending" else None
    answered_by = founder_rule(escalation.rule_id) if escalation.decided_by == "rule" else None
    return (partial, oob, request.script_root if has_request_context() else "", escalation.id, version,
            rule and repr(rule), answered_by and repr(answered_by))


def _render_with_markers(escalation: Any, partial: str, oob: bool) -> str:
    g.console_card_markers = True
    try:
        return render_template(partial, escalation=escalation, oob=oob)
    finally:
        g.console_card_markers = False


def fill_in(html: str, token: list[str] | None = None) -> Markup:
    """The cached text with its markers replaced by what they stand for, now. `token` holds
    the request's CSRF token once it is known (one list for all the cards of a page)."""
    at = now()
    token = [] if token is None else token

    def replace(match: re.Match) -> str:
        kind, value = match.group(1), match.group(2)
        if kind == "csrf":
            if not token:
                token.append(generate_csrf())
            return token[0]
        return str(escape(_FILLERS[kind](dt.datetime.fromisoformat(value), at)))

    return Markup(_MARKER.sub(replace, html))

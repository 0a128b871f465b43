"""At most CONSOLE_MAX_STREAMS_PER_TOKEN concurrent SSE streams and long-polls per credential
(SPEC §16): one agent token or one console session cannot hold the server's connections.

Counted per server process (a gunicorn worker), where the connections are held: with W
workers a credential may hold up to W × the bound in all. The slot of a stream is released
when its response is closed, which the WSGI server does however the stream ends (the client
went away, the stream's lifetime ran out, the server stops), whether or not it ever started.
"""
from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator

from flask import current_app, request, session

from .auth import SESSION_KEY
from .errors import TooManyRequests

RETRY_AFTER = 5  # seconds: a client that closed a stream gets its slot back at once


class _Slots:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[str, int] = {}

    def take(self, credential: str, limit: int) -> bool:
        with self.lock:
            if self.held.get(credential, 0) >= limit:
                return False
            self.held[credential] = self.held.get(credential, 0) + 1
            return True

    def give_back(self, credential: str) -> None:
        with self.lock:
            left = self.held.get(credential, 0) - 1
            if left > 0:
                self.held[credential] = left
            else:
                self.held.pop(credential, None)


def _slots() -> _Slots:
    return current_app.extensions.setdefault("console_stream_slots", _Slots())


def _credential() -> str:
    """Who holds the stream: the bearer token, else the console session (hashed: never kept)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        raw = "bearer:" + token.strip()
    else:
        raw = f"session:{session.get(SESSION_KEY)}"
    return hashlib.sha256(raw.encode()).hexdigest()


def _take() -> tuple[_Slots, str]:
    slots, credential = _slots(), _credential()
    limit = current_app.config["MAX_STREAMS_PER_TOKEN"]
    if not slots.take(credential, limit):
        raise TooManyRequests(
            f"This credential already holds {limit} open streams and long-polls (CONSOLE_MAX_STREAMS_PER_TOKEN): "
            "close one, or share one stream (a job's stream carries every escalation of the job).",
            retry_after=RETRY_AFTER)
    return slots, credential


@contextmanager
def stream_slot() -> Iterator[None]:
    """Hold a slot for a long-poll while the block runs."""
    slots, credential = _take()
    try:
        yield
    finally:
        slots.give_back(credential)


class _HeldStream:
    """A streamed body that gives its slot back when the server closes the response."""

    def __init__(self, stream: Iterable[str], slots: _Slots, credential: str) -> None:
        self.stream, self.slots, self.credential = stream, slots, credential
        self.released = False

    def __iter__(self):
        return iter(self.stream)

    def close(self) -> None:
        try:
            close = getattr(self.stream, "close", None)
            if close is not None:
                close()
        finally:
            if not self.released:
                self.released = True
                self.slots.give_back(self.credential)


def held_stream(stream: Iterable[str]) -> _HeldStream:
    """Take a slot for an SSE stream (429 when the credential holds its bound), given back when
    the response is closed."""
    slots, credential = _take()
    return _HeldStream(stream, slots, credential)

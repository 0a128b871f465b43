"""Console sessions on the server (SPEC §16): a session cookie counts only while its row here
is live, so signing out ends it everywhere the cookie was copied, and a founder can end all
of their sessions at once.

The cookie carries a random value; the row's id is its SHA-256, so the table alone signs
nobody in. Ended and expired rows are forgotten a day after they stop counting.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import delete, insert, select, update

from ..database import read_rows, write_transaction
from ..models import ConsoleSession, utcnow

SESSIONS = ConsoleSession.__table__
FORGET_AFTER = dt.timedelta(days=1)


def _row_id(session_key: str) -> str:
    return hashlib.sha256(session_key.encode()).hexdigest()


def open_session(founder_id: str, expires_at: dt.datetime) -> str:
    """A new live session of the founder until `expires_at`; the value its cookie carries."""
    session_key = secrets.token_urlsafe(32)
    now = utcnow()
    with write_transaction() as session:
        session.execute(insert(SESSIONS).values(id=_row_id(session_key), founder_id=founder_id, created_at=now,
                                                expires_at=expires_at, ended_at=None))
        session.execute(delete(SESSIONS).where(SESSIONS.c.expires_at < now - FORGET_AFTER))
    return session_key


def session_is_live(session_key: str, founder_id: str) -> bool:
    """Is this the founder's session, not ended, not expired?"""
    c = SESSIONS.c
    rows = read_rows(select(c.id).where(c.id == _row_id(session_key), c.founder_id == founder_id,
                                        c.ended_at.is_(None), c.expires_at > utcnow()))
    return bool(rows)


def end_session(session_key: str) -> None:
    with write_transaction() as session:
        session.execute(update(SESSIONS).where(SESSIONS.c.id == _row_id(session_key), SESSIONS.c.ended_at.is_(None))
                        .values(ended_at=utcnow()))


def end_every_session(founder_id: str) -> int:
    """End all of the founder's live sessions (every browser); how many were live."""
    c = SESSIONS.c
    now = utcnow()
    with write_transaction() as session:
        return session.execute(update(SESSIONS).where(c.founder_id == founder_id, c.ended_at.is_(None),
                                                      c.expires_at > now).values(ended_at=now)).rowcount

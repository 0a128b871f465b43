"""Engine set-up and the write transaction every state change runs in."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .extensions import db

_WRITE = "console_write_transaction"


def configure_engine(app: Flask) -> None:
    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)


def _configure_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers; and writes that start with BEGIN IMMEDIATE, so a
    transaction never has to upgrade a read lock (which SQLite refuses, busy timeout or not,
    when another process wrote in between)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(_WRITE) else "BEGIN")


@contextmanager
def write_transaction() -> Iterator[Session]:
    """One atomic unit of change: commits on success, rolls back on any error."""
    session = db.session()  # the request's Session behind the scoped proxy
    if session.in_transaction():
        session.commit()  # close a read-only transaction before taking the write lock
    session.connection(execution_options={_WRITE: True})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise

"""Engine set-up and the write transaction every state change runs in."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from flask import Flask
from sqlalchemy import Executable, Row, TextClause, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session

from .extensions import db

_WRITE = "console_write_transaction"


IDLE_PING_SECONDS = 2.0


def configure_engine(app: Flask) -> None:
    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    else:
        _ping_idle_connections(engine)


def _ping_idle_connections(engine: Engine) -> None:
    """Pessimistic disconnect handling without a round trip on every request (what
    pool_pre_ping costs): a connection is pinged only when it has sat idle in the pool, so
    one that died with the server (a restart, an outage) is replaced before a request gets
    it. A busy pool never pings; a connection that breaks under load invalidates the whole
    pool, so the next checkouts reconnect."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record):
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy):
        idle_since = record.info.get("checked_in_at")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            dbapi_connection.execute("SELECT 1")
            dbapi_connection.rollback()
        except Exception as error:
            raise DisconnectionError("idle connection is dead") from error  # the pool retries with a new one


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
    """One atomic unit of change: commits on success, rolls back on any error. It refuses
    to start on top of changes the Session already holds (objects added, changed or
    deleted outside any write transaction): those would be committed with it unseen."""
    session = db.session()  # the request's Session behind the scoped proxy
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("write_transaction() would commit changes made outside it "
                           f"({len(session.new)} new, {len(session.dirty)} changed, {len(session.deleted)} deleted "
                           "objects in the Session): make every change inside the transaction")
    if session.in_transaction():
        session.commit()  # close a read-only transaction before taking the write lock
    options = {_WRITE: True}
    if session.get_bind().dialect.name == "postgresql":
        options["isolation_level"] = "READ COMMITTED"  # reads autocommit; a write is one transaction
    session.connection(execution_options=options)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


def read_rows(statement: Executable, params: Mapping[str, Any] | None = None) -> list[Row]:
    """The rows of a read-only statement. Inside a write transaction it runs on that
    transaction's connection (a write sees its own changes, and a request never holds two
    connections at once); otherwise on a connection borrowed from the pool for this one
    statement, without a Session: on the hot reads the Session's bookkeeping cost more
    than the query (bench/README.md, "What closed the gap")."""
    sessions = db.session.registry  # look without creating the request's Session
    if sessions.has() and sessions().in_transaction():
        return sessions().execute(statement, params).all()
    with db.engine.connect() as connection:
        return connection.execute(statement, params).all()  # one fetchall, not a fetchone per row


def fetch_one(statement: TextClause, params: Mapping[str, Any]) -> tuple | None:
    """The first row of one statement, as a plain tuple. On PostgreSQL, outside a write
    transaction, it runs in autocommit on a pooled connection's own psycopg cursor: the
    hottest statements (the API's documents and the one-statement resolve) skip SQLAlchemy's
    execution layer, a fifth of a resolve's Python (bench/README.md). The pool, its checkout
    ping and disconnect handling stay SQLAlchemy's; errors arrive as SQLAlchemy's DBAPIError,
    as from every other statement."""
    if not reads_off_the_driver():
        rows = read_rows(statement, params)
        return tuple(rows[0]) if rows else None
    return _on_the_driver(statement, params, lambda cursor: cursor.fetchone())


def reads_off_the_driver() -> bool:
    """Whether a read may go straight to the driver: on PostgreSQL, outside a write
    transaction (which must see its own changes on its own connection)."""
    sessions = db.session.registry
    return db.engine.dialect.name == "postgresql" and not (sessions.has() and sessions().in_transaction())


def read_text_rows(statement: TextClause, params: Mapping[str, Any]) -> list:
    """The rows of a read-only text statement (typed with `.columns()` where SQLite needs it).
    Where reads_off_the_driver(), named tuples straight off the driver (as fetch_one): for
    the small reads of every page with cards, where SQLAlchemy's result layer cost more than
    the statement. Else SQLAlchemy's Rows."""
    if not reads_off_the_driver():
        return read_rows(statement, params)
    from psycopg.rows import namedtuple_row  # noqa: PLC0415  (PostgreSQL only)

    def fetch_all(cursor):
        cursor.row_factory = namedtuple_row
        return cursor.fetchall()

    return _on_the_driver(statement, params, fetch_all)


def _on_the_driver(statement: TextClause, params: Mapping[str, Any], fetch):
    engine = db.engine
    sql = _driver_sql.get(statement)
    if sql is None:
        sql = _driver_sql[statement] = statement.compile(dialect=engine.dialect).string
    dbapi = engine.dialect.loaded_dbapi
    try:
        connection = engine.raw_connection()
    except dbapi.Error as error:  # no connection to be had (Engine.connect() wraps this too)
        raise DBAPIError.instance(None, None, error, dbapi.Error, dialect=engine.dialect) from error
    try:
        dbapi_connection = connection.driver_connection
        if not dbapi_connection.autocommit:  # the engine's isolation level; never left otherwise
            dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql, params)
            return fetch(cursor)
        except dbapi.Error as error:
            disconnected = engine.dialect.is_disconnect(error, dbapi_connection, cursor)
            if disconnected:
                connection.invalidate(error)
            raise DBAPIError.instance(sql, params, error, dbapi.Error,
                                      connection_invalidated=disconnected, dialect=engine.dialect) from error
        finally:
            cursor.close()
    finally:
        connection.close()


_driver_sql: dict[TextClause, str] = {}

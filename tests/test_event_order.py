"""SPEC §3: a reader that has seen event id N never later finds a new event below N — with
writers in two real server processes committing concurrently, and without any lock
(PostgreSQL: ids in transaction order, readers held back below the oldest transaction in
flight, console/events.py and migration 0008)."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from conftest import GunicornServer, dispose, make_app, migrate, plain_url
from console import events
from console.events import list_events, list_founder_events, latest_visible_event_id
from console.extensions import db
from test_realtime import call, escalate, resolve

pytestmark = pytest.mark.slow

WRITERS_PER_SERVER = 4
WRITES_PER_WRITER = 25


def letters(*numbers: int) -> str:
    """Digits become letters: the signature's normaliser would make every number alike."""
    return "-".join(str(n).translate(str.maketrans("0123456789", "abcdefghij")) for n in numbers)


def page_through(read, stop: threading.Event) -> list[int]:
    """What a client sees paging with `after`, until the writers stop, then once more."""
    seen: list[int] = []
    after = 0
    while True:
        done = stop.is_set()
        ids = read(after)
        seen += ids
        after = ids[-1] if ids else after
        if done and not ids:
            return seen
        if not ids:
            time.sleep(0.002)


INSERT_EVENT = text("INSERT INTO job_events (job_id, founder_id, type, payload, created_at) "
                    "VALUES (:job, :founder, 'agent.thinking', '{}', now()) RETURNING id")


def transactional():
    """A connection whose begin() starts a real transaction (the app's engine autocommits)."""
    return db.engine.connect().execution_options(isolation_level="READ COMMITTED")


@pytest.fixture
def pg_app(app, dialect):
    if dialect != "postgresql":
        pytest.skip("SQLite has one writer at a time: its ids are visible in order as they are")
    return app


def test_an_event_committed_behind_an_older_open_transaction_waits_for_it(pg_app, ids, monkeypatch):
    """The case a plain sequence gets wrong: 42 is still in flight when 43 commits."""
    job = ids.new("job")
    with pg_app.app_context():
        with transactional() as older, transactional() as newer:
            older.begin()
            first = older.execute(INSERT_EVENT, {"job": job, "founder": ids.founder_id}).scalar_one()
            with newer.begin():
                second = newer.execute(INSERT_EVENT, {"job": job, "founder": ids.founder_id}).scalar_one()
            assert first < second
            # 43 is committed, but a reader that took it now would skip 42 for ever
            monkeypatch.setattr(events, "HOLD_BACK_SECONDS", 0)
            assert list_events(job, 0, 10) == []
            assert list_founder_events(ids.founder_id, 0, 10) == []
            assert latest_visible_event_id() < first
            # A reader given time waits for the older transaction instead, and gets both.
            monkeypatch.setattr(events, "HOLD_BACK_SECONDS", 30)
            read: list = []
            reader = threading.Thread(target=lambda: read.append(in_app(pg_app, list_events, job, 0, 10)))
            reader.start()
            time.sleep(0.2)
            older.commit()
            reader.join(30)
        assert [event.id for event in read[0]] == [first, second]
        assert [event.id for event in list_founder_events(ids.founder_id, 0, 10)] == [first, second]
        assert latest_visible_event_id() >= second


def test_a_transaction_open_in_another_database_holds_nobody_back(pg_app, postgres, ids, monkeypatch):
    elsewhere_url = postgres.create("console_elsewhere")
    job = ids.new("job")
    monkeypatch.setattr(events, "HOLD_BACK_SECONDS", 0)  # answer with what is final, at once
    try:
        with psycopg.connect(plain_url(elsewhere_url)) as elsewhere:
            elsewhere.execute("SELECT pg_current_xact_id()")  # an open transaction, older than ours
            with pg_app.app_context():
                with transactional() as connection, connection.begin():
                    stored = connection.execute(INSERT_EVENT, {"job": job, "founder": ids.founder_id}).scalar_one()
                assert [event.id for event in list_events(job, 0, 10)] == [stored]
                assert latest_visible_event_id() >= stored
            elsewhere.rollback()
    finally:
        postgres.drop(elsewhere_url)


def in_app(app, function, *args):
    with app.app_context():
        return function(*args)


def test_a_rolled_back_event_leaves_a_gap_and_holds_nobody_back(pg_app, ids):
    job = ids.new("job")
    with pg_app.app_context():
        with transactional() as connection:
            with connection.begin() as transaction:
                lost = connection.execute(INSERT_EVENT, {"job": job, "founder": ids.founder_id}).scalar_one()
                transaction.rollback()
            with connection.begin():
                kept = connection.execute(INSERT_EVENT, {"job": job, "founder": ids.founder_id}).scalar_one()
        assert lost < kept
        assert [event.id for event in list_events(job, 0, 10)] == [kept]


def test_one_transaction_numbers_its_events_in_order_up_to_its_bound(pg_app, ids):
    job = ids.new("job")
    with pg_app.app_context():
        with transactional() as connection:
            with connection.begin():
                numbered = [connection.execute(INSERT_EVENT, {"job": job, "founder": ids.founder_id}).scalar_one()
                            for _ in range(1023)]
            assert numbered == list(range(numbered[0], numbered[0] + 1023))
            assert numbered[0] % 1024 == 1  # each transaction starts afresh
            with connection.begin():
                for _ in range(1023):
                    connection.execute(INSERT_EVENT, {"job": job, "founder": ids.founder_id})
                with pytest.raises(DBAPIError, match="at most 1023 job events"):
                    connection.execute(INSERT_EVENT, {"job": job, "founder": ids.founder_id})
        assert len(list_events(job, 0, 5000)) == 1023  # the refused transaction stored nothing


def test_readers_never_find_an_event_below_one_they_have_seen(postgres, ids):
    url = postgres.create("console_order")
    migrate(url)
    founder, other = ids.new("founder"), ids.new("founder")
    jobs = [ids.new("job") for _ in range(2)]  # two jobs of one founder, written at once
    reader_app = make_app(url)
    try:
        with GunicornServer(url, workers=1) as a, GunicornServer(url, workers=1) as b:
            def write(server, n):
                job = jobs[n % 2]
                for i in range(WRITES_PER_WRITER):
                    if i % 5 == 4:  # a resolve too: the one-statement path that stores its event
                        resolve(server.url, escalate(server.url, job, founder, f"KeyError: {letters(n, i)}"))
                    else:
                        status, body = call(server.url, "POST", f"/api/jobs/{job}/events",
                                            {"type": "agent.retrying", "founder_id": founder, "attempt": i})
                        assert status == 201, (body, server.log_text()[-3000:])
                    # Another founder's writes interleave, committing out of id order: they
                    # must not disturb this founder's readers.
                    call(server.url, "POST", f"/api/jobs/{ids.job_id}/events",
                         {"type": "agent.thinking", "founder_id": other})

            stop = threading.Event()
            results: dict[str, list[int]] = {}

            def job_reader():
                def read(after):
                    status, body = call(a.url, "GET", f"/api/jobs/{jobs[0]}/events?after={after}&limit=500")
                    assert status == 200, body
                    return [item["id"] for item in body["items"]]
                results["job"] = page_through(read, stop)

            def founder_reader():
                def read(after):
                    with reader_app.app_context():
                        return [event.id for event in list_founder_events(founder, after, 500)]
                results["founder"] = page_through(read, stop)

            readers = [threading.Thread(target=job_reader), threading.Thread(target=founder_reader)]
            writers = [threading.Thread(target=write, args=(server, n))
                       for n, server in enumerate([a, b] * WRITERS_PER_SERVER)]
            for thread in readers + writers:
                thread.start()
            for thread in writers:
                thread.join(timeout=120)
            stop.set()
            for thread in readers:
                thread.join(timeout=30)

            status, body = call(a.url, "GET", f"/api/jobs/{jobs[0]}/events?limit=500")
            every_job_event = [item["id"] for item in body["items"]]
        with reader_app.app_context():
            every_founder_event = [event.id for event in list_founder_events(founder, 0, 5000)]
    finally:
        dispose(reader_app)
        postgres.drop(url)
    writes = 2 * WRITERS_PER_SERVER * WRITES_PER_WRITER
    resolves = 2 * WRITERS_PER_SERVER * (WRITES_PER_WRITER // 5)
    assert len(every_founder_event) == writes + resolves  # each resolve also stored its question
    # A reader that skipped an id (it committed below one already seen) never sees it: the
    # concatenated pages would then differ from the log.
    assert results["job"] == every_job_event
    assert results["founder"] == every_founder_event

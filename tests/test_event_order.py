"""SPEC §3: a reader that has seen event id N never later finds a new event below N — with
writers in two real server processes committing concurrently, and without one lock for
the whole database (events are ordered per founder: console/events.py)."""
from __future__ import annotations

import threading
import time

import pytest

from conftest import GunicornServer, dispose, make_app, migrate
from console.events import list_founder_events
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
                    # Another founder's writes interleave and, without a global lock, take ids
                    # out of commit order: they must not disturb this founder's readers.
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

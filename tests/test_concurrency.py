"""Races on real databases: one winner per resolve, one row per duplicate burst, event ids
that become visible in order (SPEC §3, §6)."""
import threading
import time

import pytest

from conftest import dispose, make_app
from console.auth import AGENT
from console.extensions import db
from console.events import list_founder_events
from console.schemas import EscalationCreate
from console.services import escalations as service
from console.services import jobs as job_service


def run_at_once(count: int, work) -> list:
    """Run work(i) in `count` threads released together; the results (or exceptions) in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def worker(i):
        barrier.wait(timeout=30)
        try:
            results[i] = work(i)
        except Exception as error:  # asserted by the caller
            results[i] = error

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.fixture
def race_app(database_url):
    # a pool big enough for every racer: the race is in the database, not in the pool
    options = {} if database_url.startswith("sqlite") else {"pool_size": 25, "max_overflow": 0, "pool_timeout": 30}
    app = make_app(database_url, **({"SQLALCHEMY_ENGINE_OPTIONS": options} if options else {}))
    yield app
    dispose(app)


def create_body(ids, **fields):
    return EscalationCreate.model_validate({
        "session_id": ids.session_id, "project_id": ids.project_id, "founder_id": ids.founder_id,
        "error_type": "KeyError", "plain_english_problem": "Stuck.", "recommended_action": "Skip.",
        "error_message": "KeyError: 'x'",
        "options": [{"value": f"choice_{i}", "label": f"Choice {i}"} for i in range(10)], **fields})


def in_app(app, fn):
    def run(i):
        with app.app_context():
            try:
                return fn(i)
            finally:
                db.session.remove()
    return run


def test_many_concurrent_resolves_have_exactly_one_winner_and_one_event(race_app, ids):
    from console.errors import Conflict

    with race_app.app_context():
        escalation, _ = service.create_escalation(ids.job_id, create_body(ids))
        escalation_id = escalation.id
    results = run_at_once(20, in_app(race_app, lambda i: service.resolve_escalation(
        escalation_id, ids.founder_id, f"choice_{i % 10}", f"guidance {i}").founder_guidance))
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1, results
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, str)), results
    with race_app.app_context():
        stored = service.get_escalation(escalation_id, AGENT)
        resolved = [e for e in job_service.list_job_events(ids.job_id, AGENT, 0, 100)
                    if e.type == "agent.escalation_resolved"]
    assert stored.founder_guidance == winners[0]
    assert len(resolved) == 1 and resolved[0].payload["guidance"] == winners[0]


def test_concurrent_identical_creates_make_one_row_counting_every_occurrence(race_app, ids):
    results = run_at_once(12, in_app(race_app, lambda i: service.create_escalation(ids.job_id, create_body(ids))))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(created for _, created in results) == 1
    assert len({escalation.id for escalation, _ in results}) == 1
    with race_app.app_context():
        [row] = service.list_job_escalations(ids.job_id, AGENT)
        waiting = [e for e in job_service.list_job_events(ids.job_id, AGENT, 0, 100)]
    assert row.occurrences == 12
    assert [e.type for e in waiting] == ["agent.waiting_for_input"]


def test_event_ids_become_visible_in_order_under_concurrent_writers(race_app, ids):
    """A reader that has seen id N never later finds a smaller new id (SPEC §3)."""
    stop = time.monotonic() + 3
    violations: list = []

    def reader():
        with race_app.app_context():
            seen: set[int] = set()
            high = 0
            while time.monotonic() < stop:
                visible = [event.id for event in list_founder_events(ids.founder_id, 0, 100_000)]
                fresh = set(visible) - seen
                late = [i for i in fresh if i < high]
                if late:
                    violations.append((high, sorted(late)))
                seen |= fresh
                high = max(seen, default=0)
            db.session.remove()

    def writer(i):
        n = 0
        while time.monotonic() < stop:
            job_service.post_job_event(f"{ids.job_id}-{i}", "agent.thinking", ids.founder_id, None, {"n": n})
            n += 1
        return n

    reader_thread = threading.Thread(target=reader)
    reader_thread.start()
    written = run_at_once(6, in_app(race_app, writer))
    reader_thread.join(30)
    assert all(isinstance(n, int) and n > 0 for n in written), written
    assert violations == []

"""The per-process hub (console/hub.py): per-key wake-ups and shared reads."""
from __future__ import annotations

import threading
import time

from console.hub import EventHub, job_key


def test_an_event_wakes_only_the_waiters_of_its_job_and_founder(app):
    hub = EventHub(app)
    hub.stop()  # no feed: the test publishes by hand
    woken = {}

    def waiter(name, key):
        with hub.watch(key):
            woken[name] = hub.wait(key, 0, 3)

    threads = [threading.Thread(target=waiter, args=(n, k))
               for n, k in (("job a", "job:a"), ("job b", "job:b"), ("founder f", "founder:f"))]
    for thread in threads:
        thread.start()
    while hub.watching < 3:
        time.sleep(0.01)
    started = time.monotonic()
    hub.publish([(7, "a", "f")])
    threads[0].join()
    threads[2].join()
    assert time.monotonic() - started < 2 and woken["job a"] and woken["founder f"]
    threads[1].join()
    assert woken["job b"] is False  # slept its full timeout: nothing of its job happened


def test_waiters_asking_the_same_question_share_one_read(app):
    hub = EventHub(app)
    hub.stop()
    key = job_key("j")
    loads = []
    gate = threading.Event()

    def load():
        loads.append(1)
        gate.wait(2)
        return ["rows"]

    answers = []

    def reader():
        with hub.watch(key):
            answers.append(hub.shared_read(key, ("events", 0), load))

    threads = [threading.Thread(target=reader) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join()
    assert answers == [["rows"]] * 20 and len(loads) == 1
    with hub.watch(key):
        hub.shared_read(key, ("events", 0), load)
        hub.shared_read(key, ("events", 0), load)  # nothing new is known: the same answer
        assert len(loads) == 2
        hub.publish([(8, "j", "f")])  # a newer event: the next read is made afresh
        hub.shared_read(key, ("events", 0), load)
        assert len(loads) == 3

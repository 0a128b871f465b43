"""The connection pool serves checkouts in arrival order (console/pool.py): nobody who
arrives later takes a connection ahead of someone already waiting."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import exc

from console.pool import FairGate, FairQueuePool


def test_a_freed_permit_goes_to_the_oldest_waiter_not_to_a_newcomer():
    gate = FairGate(1)
    assert gate.acquire(1)
    served: list[str] = []

    def wait(name):
        assert gate.acquire(5)
        served.append(name)

    first = threading.Thread(target=wait, args=("first",))
    first.start()
    while not gate._waiters:  # the first waiter is queued
        time.sleep(0.001)
    second = threading.Thread(target=wait, args=("second",))
    second.start()
    while len(gate._waiters) < 2:
        time.sleep(0.001)
    gate.release()
    assert not gate.acquire(0.05)  # a newcomer cannot barge in: the permit went to "first"
    first.join(5)
    assert served == ["first"]
    gate.release()
    second.join(5)
    assert served == ["first", "second"]


def test_a_waiter_that_times_out_leaves_the_queue_and_the_permit_count_stays_true():
    gate = FairGate(1)
    assert gate.acquire(1)
    assert not gate.acquire(0.01)
    assert not gate._waiters
    gate.release()
    assert gate.acquire(0) and not gate.acquire(0)


def test_the_pool_hands_connections_out_in_arrival_order_and_times_out_with_sqlalchemys_error(tmp_path):
    import sqlite3

    pool = FairQueuePool(lambda: sqlite3.connect(tmp_path / "pool.db", check_same_thread=False),
                         pool_size=1, max_overflow=0, timeout=5)
    held = pool.connect()
    order: list[int] = []

    def checkout(n):
        connection = pool.connect()
        order.append(n)
        time.sleep(0.01)
        connection.close()

    threads = []
    for n in range(5):
        threads.append(threading.Thread(target=checkout, args=(n,)))
        threads[-1].start()
        while len(pool._gate._waiters) < n + 1:
            time.sleep(0.001)
    held.close()
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4]

    quick = FairQueuePool(lambda: sqlite3.connect(":memory:", check_same_thread=False),
                          pool_size=1, max_overflow=0, timeout=0.05)
    kept = quick.connect()
    with pytest.raises(exc.TimeoutError):
        quick.connect()
    kept.close()
    quick.connect().close()  # the slot came back

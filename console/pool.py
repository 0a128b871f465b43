"""A first-come, first-served connection pool.

SQLAlchemy's QueuePool lets a newly arrived request take a connection that was just
returned for a request already waiting (the waiter wakes, finds the queue empty, and
waits again at the back). With gevent's cooperative scheduling that happens nearly every
time: under a burst the waiting few starve while newcomers pass them, and the p99 of a
saturated pool grows to hundreds of milliseconds while its median drops. `FairQueuePool`
puts a gate in front of the queue that hands each freed slot to the longest waiter.
"""
from __future__ import annotations

import threading
from collections import deque

from sqlalchemy import exc
from sqlalchemy.pool import QueuePool


class FairGate:
    """A counting semaphore that serves its waiters in arrival order: a released permit is
    handed to the oldest waiter directly, so nobody can overtake it."""

    def __init__(self, permits: int):
        self._permits = permits
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        with self._lock:
            if self._permits > 0 and not self._waiters:
                self._permits -= 1
                return True
            granted = threading.Event()
            self._waiters.append(granted)
        if granted.wait(timeout):
            return True
        with self._lock:
            if granted.is_set():  # handed over just as the wait timed out: it is ours
                return True
            self._waiters.remove(granted)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # the permit passes straight to the oldest waiter
            else:
                self._permits += 1


class FairQueuePool(QueuePool):
    """QueuePool whose checkouts are served in arrival order (see the module's doc)."""

    def __init__(self, creator, pool_size: int = 5, max_overflow: int = 10, timeout: float = 30.0, **kw):
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, timeout=timeout, **kw)
        self._gate = FairGate(pool_size + max(max_overflow, 0)) if max_overflow >= 0 else None

    def _do_get(self):
        if self._gate is not None and not self._gate.acquire(self._timeout):
            raise exc.TimeoutError(
                f"QueuePool limit of size {self.size()} overflow {self._max_overflow} reached, "
                f"connection timed out, timeout {self._timeout:.2f}", code="3o7r")
        try:
            return super()._do_get()
        except BaseException:
            if self._gate is not None:
                self._gate.release()
            raise

    def _do_return_conn(self, record) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            if self._gate is not None:
                self._gate.release()

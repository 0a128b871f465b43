"""Per-app caches shared by a process's threads (and greenlets): a cachetools cache (bounded,
and expiring where it is a TTLCache) behind one lock, since cachetools' caches are not
thread-safe by themselves."""
from __future__ import annotations

import threading
from typing import Any, Callable

from cachetools import Cache
from flask import current_app


class LockedCache:
    """The operations the console uses, each under the lock. `cache` is the cache itself."""

    def __init__(self, cache: Cache):
        self.cache = cache
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            return self.cache.get(key, default)

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self.cache[key] = value

    def pop(self, key, default=None):
        with self._lock:
            return self.cache.pop(key, default)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self.cache

    def __len__(self) -> int:
        with self._lock:
            return len(self.cache)


def app_cache(name: str, make: Callable[[], Cache]) -> LockedCache:
    """This app's cache called `name`, made on first use. Per app, not per process: one
    process may serve several databases (the tests run SQLite and PostgreSQL apps side by
    side), and what one remembered must never answer for another."""
    found: Any = current_app.extensions.get(name)
    if found is None:
        found = current_app.extensions.setdefault(name, LockedCache(make()))
    return found

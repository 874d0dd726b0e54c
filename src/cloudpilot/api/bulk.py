"""Bulk work off the event loop without freezing it through the garbage collector.

A 100,000-job submission allocates millions of short-lived objects in a worker thread. CPython's full
(generation 2) collections then run over all of them, each holding the GIL for hundreds of milliseconds: the
event loop, and ``/api/v1/health`` with it, stands still however the work is threaded. While bulk work runs,
:func:`no_full_collections` keeps the young generations collected (cheap, bounded) but defers full ones; the
objects are freed by reference counting when the request ends, so the heap a later full collection sees is
the usual one.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_active = 0
_saved: tuple[int, ...] = ()
NEVER = 1 << 30  # a generation-2 threshold no count reaches in one request


@contextmanager
def no_full_collections() -> Iterator[None]:
    """Defer generation-2 collections for the duration; nested and concurrent uses share one deferral."""
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(_saved[0], _saved[1], NEVER)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                gc.set_threshold(*_saved)


async def run_bulk(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func(*args, **kwargs)`` in the thread pool, with full collections deferred (see above)."""

    def call() -> T:
        with no_full_collections():
            return func(*args, **kwargs)

    return await run_in_threadpool(call)

"""Wakes long-polling pilots when work arrives in this process (other processes are seen by polling), and when
the server starts to stop: their long polls then end with "no job" at once instead of holding the shutdown for
its whole grace period and being cancelled with an error."""

from __future__ import annotations

import asyncio


class WorkNotifier:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event = asyncio.Event()
        self.draining = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def current(self) -> asyncio.Event:
        """Take the event *before* looking for work, then wait on it: a notify in between is not missed."""
        return self._event

    def notify(self) -> None:
        """Callable from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        fired, self._event = self._event, asyncio.Event()
        fired.set()

    def drain(self) -> None:
        """The server is stopping (called on its event loop): wake every long poll, for good."""
        self.draining = True
        self._fire()

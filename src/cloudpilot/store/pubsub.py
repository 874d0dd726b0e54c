"""Signals between the server processes of one PostgreSQL database: NOTIFY to send, LISTEN to receive.

Each process has one :class:`PgSignals`: a sender thread and a listener thread, each on a dedicated autocommit
connection (a pooled connection would hold its notifications until its next query). Sending never waits on
the database: signals are queued and sent by the sender thread, identical ones coalesced (a burst of 1,000
submissions is a handful of NOTIFYs). Every payload starts with the sender's origin, so a process skips its own.

A notification is lost when the listener's connection is down; when it comes back, ``on_reconnect`` is called
so the process can drop every cache the lost signals would have refreshed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from cloudpilot.store.leadership import dedicated_connection

log = logging.getLogger("cloudpilot.signals")

RETRY_SECONDS = 1.0


class PgSignals:
    def __init__(
        self,
        url: str,
        origin: str,
        channels: dict[str, Callable[[str], None]],
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = url
        self.origin = origin
        self.channels = channels  # channel -> handler of the payload (without the origin)
        self.on_reconnect = on_reconnect
        self._pending: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._listening = threading.Event()  # set while LISTEN is in effect (tests wait on it)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._send_loop, "cloudpilot-notify"), (self._listen_loop, "cloudpilot-listen")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=3)

    def wait_listening(self, timeout: float) -> bool:
        return self._listening.wait(timeout)

    def send(self, channel: str, payload: str = "") -> None:
        """Queue a signal for every other process (callable from any thread; never blocks on the database)."""
        with self._lock:
            self._pending.add((channel, payload))
        self._wake.set()

    # --- threads ----------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, set()
            if not batch or self._stop.is_set():
                continue
            try:
                if conn is None or conn.closed:
                    conn = dedicated_connection(self.url, "cloudpilot-notify")
                with conn.transaction():  # one round trip for the batch
                    for channel, payload in batch:
                        conn.execute("SELECT pg_notify(%s, %s)", (channel, f"{self.origin}:{payload}"))
            except psycopg.Error as exc:
                # Peers fall back on their own polling (pilots retry every 0.5 s, snapshots refresh); try again.
                log.warning("could not signal the other servers: %s", exc)
                conn = None
                with self._lock:
                    self._pending |= batch
                time.sleep(RETRY_SECONDS)
                self._wake.set()
        if conn is not None:
            conn.close()

    def _listen_loop(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                with dedicated_connection(self.url, "cloudpilot-listen") as conn:
                    for channel in self.channels:
                        conn.execute(f'LISTEN "{channel}"')
                    if not first:
                        self.on_reconnect()  # what was signalled while we were away is lost
                    first = False
                    self._listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._dispatch(note.channel, note.payload)
            except psycopg.Error as exc:
                self._listening.clear()
                log.warning("listening for the other servers failed (%s); reconnecting in %.0f s", exc, RETRY_SECONDS)
                self._stop.wait(RETRY_SECONDS)

    def _dispatch(self, channel: str, payload: str) -> None:
        origin, _, data = payload.partition(":")
        handler = self.channels.get(channel)
        if handler is None or origin == self.origin:
            return
        try:
            handler(data)
        except Exception:  # a handler's bug must not end the listener: the signals after it still matter
            log.exception("handling the signal %s %r failed", channel, data)

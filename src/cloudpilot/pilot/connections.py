"""Kept-alive HTTP(S) connections to the server, for the pilot's calls (standard library only).

A job costs the pilot a few calls (a report that it runs, one that it ended, which also brings the slot's next
job); a new TCP (and TLS) connection for each would cost more than the call. The pool keeps the pilot's idle
connections and hands one to each call: a pilot running N jobs at once uses a few connections at the same
time (its long poll, its jobs' reports and heartbeats), usually one.

A kept connection the server closed meanwhile (it drops idle ones after a few seconds) fails as soon as a
request is written on it: that request never reached the server, and is sent again once on a new connection.
Connections idle longer than :data:`IDLE_SECONDS` are not reused at all.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import threading
import time
from dataclasses import dataclass
from typing import IO

IDLE_SECONDS = 4.0  # below uvicorn's keep-alive timeout (5 s): the server never closes one under a request
MAX_IDLE = 8
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    body: bytes


class ConnectionPool:
    def __init__(self, scheme: str, host: str, port: int | None, ssl_context: ssl.SSLContext | None) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.ssl_context = ssl_context
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        target: str,
        *,
        data: bytes | IO[bytes] | None,
        headers: dict[str, str],
        timeout: float,
        sink: IO[bytes] | None = None,
    ) -> Answer:
        """Send one request and read its answer (into ``sink`` when given, if it is a success)."""
        conn, reused = self._take(timeout)
        try:
            try:
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
            except STALE:
                if not reused or not _rewindable(data):
                    raise
                conn.close()  # the server had closed it: the request never got there
                conn, reused = self._new(timeout), False
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
            if sink is not None and response.status < 300:
                shutil.copyfileobj(response, sink, 1 << 20)
                body = b""
            else:
                body = response.read()
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return Answer(response.status, response.reason, body)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        now = time.monotonic()
        stale = []
        conn = None
        with self._lock:
            while self._idle:
                since, candidate = self._idle.pop()
                if now - since < IDLE_SECONDS:
                    conn = candidate
                    break
                stale.append(candidate)
        for old in stale:
            old.close()
        if conn is None:
            return self._new(timeout), False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, True

    def _new(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append((time.monotonic(), conn))
                return
        conn.close()


def _rewindable(data: bytes | IO[bytes] | None) -> bool:
    if data is None or isinstance(data, bytes):
        return True
    try:
        data.seek(0)
    except (AttributeError, OSError):
        return False
    return True

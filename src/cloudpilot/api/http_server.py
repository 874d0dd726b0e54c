"""How uvicorn serves the app: the limits of ``server.*`` in the configuration (docs/configuration.md).

The protocol is uvicorn's httptools one (the C parser: the pure-Python h11 took a fifth of the server's CPU on
the pilots' small requests), with two guards it lacks. uvicorn closes idle keep-alive connections
(``timeout_keep_alive``), but it waits forever for a head that arrives slowly or not at all, and with httptools it
sets no bound on a head's size: a few hundred such connections would hold the server. :class:`HeadTimeoutProtocol`
closes a connection whose request head is not complete within ``server.header_timeout_seconds`` of its first
byte (or of the connection), and answers 431 to a head over ``server.max_header_bytes``. On a graceful shutdown
it also calls the app's drain callback (lifespan state ``DRAIN_STATE_KEY``), so that long polls answer at once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cloudpilot.api.responses import error_body
from cloudpilot.config import ServerConfig

DRAIN_STATE_KEY = "cloudpilot.drain"


class HeadTimeoutProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    _head_timer: asyncio.TimerHandle | None = None
    _in_head = True  # what arrives now belongs to a request head (the first, or the next on a kept-alive link)
    _head_bytes = 0
    _refused = False  # a head too large was answered 431: the rest of what the parser sees is ignored

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if not self._in_head or self._refused or self.transport.is_closing():
            return
        if self._head_bytes > self.max_header_bytes:  # the parser has not seen the head's end in all of it
            self._refuse_head()
        elif self._head_bytes:  # part of a head came: its end is due. Not after a whole request (see below)
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        # A whole head may come in one read: measure it from what was parsed (line and headers, with separators).
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) + 16
        if size > self.max_header_bytes:
            self._refuse_head()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        # The next bytes start the next request's head; until they come, the connection is idle or its request is
        # being served (a long poll, a large submission): uvicorn's keep-alive timeout applies once answered, and
        # no head timer may run meanwhile (one did, and cut every long poll longer than the head timeout).
        self._in_head, self._head_bytes = True, 0

    def shutdown(self) -> None:
        drain = self.app_state.get(DRAIN_STATE_KEY)
        if drain is not None:  # idempotent: every connection calls it
            drain()
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.close()

    def _refuse_head(self) -> None:
        self._disarm()
        self._refused = True
        message = f"the request head is over server.max_header_bytes ({self.max_header_bytes} bytes)"
        body = json.dumps(error_body("too_large", message)).encode()
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()


def uvicorn_options(config: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` that apply ``server.*``."""
    limits = config.server
    protocol = type(
        "HeadTimeoutProtocol",
        (HeadTimeoutProtocol,),
        {"header_timeout": limits.header_timeout_seconds, "max_header_bytes": limits.max_header_bytes},
    )
    return {
        "http": protocol,
        "timeout_keep_alive": limits.keep_alive_seconds,
        "timeout_graceful_shutdown": limits.shutdown_grace_seconds,
    }

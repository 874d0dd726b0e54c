"""How uvicorn serves the app: the limits of ``server.*`` in the configuration (docs/configuration.md).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and caps a request head
(``h11_max_incomplete_event_size``), but it waits forever for a head that arrives slowly or not at all: a few
hundred such connections would hold the server. :class:`HeadTimeoutProtocol` closes a connection whose request
head is not complete within ``server.header_timeout_seconds`` of its first byte (or of the connection).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from cloudpilot.config import ServerConfig


class HeadTimeoutProtocol(H11Protocol):
    header_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # the head of the next request is not complete yet
            self._arm()
        else:
            self._disarm()

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
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(config: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` that apply ``server.*``."""
    limits = config.server
    protocol = type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"header_timeout": limits.header_timeout_seconds})
    return {
        "http": protocol,
        "timeout_keep_alive": limits.keep_alive_seconds,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "timeout_graceful_shutdown": limits.shutdown_grace_seconds,
    }

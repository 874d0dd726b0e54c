"""A TCP proxy in front of PostgreSQL that counts the client's round trips, for ``benchmarks/matcher.py``.

A round trip is a request the client must wait on: a simple ``Query`` message ('Q'), or a ``Sync`` ('S') that
closes an extended-protocol batch (Parse/Bind/Execute). BEGIN and COMMIT are round trips of their own, so a
transaction of one statement costs three and the same statement in autocommit one. The proxy parses the
client's side of the wire protocol only (the startup packet has no type byte; TLS is refused by connecting with
``sslmode=disable``) and passes every byte through unchanged.
"""

from __future__ import annotations

import socket
import struct
import threading
from contextlib import suppress

SSL_REQUEST, GSS_REQUEST = 80877103, 80877104


class RoundTripCounter:
    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.upstream = upstream
        self.round_trips = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable&gssencmode=disable"

    def close(self) -> None:
        with suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=_pipe, args=(server, client), daemon=True).start()

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buf = b""
        started = False
        try:
            while data := client.recv(1 << 16):
                server.sendall(data)
                buf += data
                while True:
                    if not started:  # untyped: length, then a code (SSL/GSS request) or the startup packet
                        if len(buf) < 8:
                            break
                        length, code = struct.unpack("!ii", buf[:8])
                        if len(buf) < length:
                            break
                        buf = buf[length:]
                        started = code not in (SSL_REQUEST, GSS_REQUEST)
                        continue
                    if len(buf) < 5:
                        break
                    kind, length = buf[:1], struct.unpack("!i", buf[1:5])[0]
                    if len(buf) < 1 + length:
                        break
                    buf = buf[1 + length :]
                    if kind in (b"Q", b"S"):
                        with self._lock:
                            self.round_trips += 1
        except OSError:
            pass
        finally:
            for s in (client, server):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

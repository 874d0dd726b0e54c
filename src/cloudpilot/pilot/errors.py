"""Errors of the pilot: one root, retryable apart from fatal.

PilotError                  root
├── TransportError          a call to the server did not succeed
│   ├── ServerUnreachable   no connection, a timeout, a 5xx (or 408/429): retry with backoff     (retryable)
│   ├── LeaseLost           409 on a call about a job: the lease is not ours any more; drop the job
│   └── RequestRejected     any other 4xx: the server refuses this request                       (fatal)
│       └── UntrustedServer the server's TLS certificate does not verify: no request can succeed    (fatal)
├── GaveUp                  the server stayed unreachable for longer than ``give_up_seconds``
├── Stopped                 the pilot is shutting down; the call was abandoned
├── ProtocolError           an answer of the server that does not have the documented shape
└── UnsafeArchive           an input sandbox with a member that would land outside the job directory
    └── SandboxTooLarge     an input sandbox that unpacks to more bytes or entries than the pilot allows
"""

from __future__ import annotations


class PilotError(Exception):
    """Root of every error the pilot raises on purpose."""


class TransportError(PilotError):
    """A call to the server failed. ``status`` is ``None`` when no answer came back."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ServerUnreachable(TransportError):
    """No connection, a timeout, or a 5xx: worth trying again later."""


class LeaseLost(TransportError):
    """409 on a call about a job: another attempt owns the job now (or it became final)."""


class RequestRejected(TransportError):
    """A 4xx other than 409 on a job call: retrying the same request cannot help."""


class UntrustedServer(RequestRejected):
    """The server's TLS certificate does not verify against the system's CAs or ``--ca-file``.

    Fatal, not retried: the pilot must not talk to a server it cannot authenticate, and waiting changes nothing.
    """


class GaveUp(PilotError):
    """The server stayed unreachable for longer than the pilot is willing to wait."""


class Stopped(PilotError):
    """The pilot was told to stop while it waited to retry."""


class ProtocolError(PilotError):
    """The server answered with something that is not what the REST contract describes."""


class UnsafeArchive(PilotError):
    """An archive member that is absolute, contains ``..``, is a special file, or links outside its directory."""


class SandboxTooLarge(UnsafeArchive):
    """An input sandbox whose headers add up to more than ``--max-unpacked-bytes`` or ``--max-unpacked-entries``."""

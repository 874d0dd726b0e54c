"""Errors of the client SDK: one root, one class per kind of answer the API gives.

ClientError                 root; carries status, code, message, field
├── JobFileError            a job file or an input file is unusable; found before anything is sent
├── WaitTimedOut            ``wait`` gave up before every job was final
├── UnsafeArchive           an output archive with a member that would land outside the destination
├── InvalidRequest          400 bad_request, 422 invalid (``field`` names the culprit)
├── Unauthenticated         401: missing, unknown, expired or revoked token        (fatal)
├── Forbidden               403: the token may not do this (another user's job)    (fatal)
├── NotFound                404: no such job or sandbox, or no output yet
├── ConflictError           409: the state change is not allowed (a final job)
├── TooLarge                413: a sandbox or a submission over the server's limit
└── ServerUnavailable       no connection, a timeout, or a 5xx                      (retryable)
"""

from __future__ import annotations


class ClientError(Exception):
    """Root of every error the SDK raises. ``status`` is ``None`` when no answer came from the server."""

    retryable = False

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field


class JobFileError(ClientError):
    pass


class WaitTimedOut(ClientError):
    def __init__(self, message: str, counts: dict[str, int]) -> None:
        super().__init__(message)
        self.counts = counts


class UnsafeArchive(ClientError):
    pass


class InvalidRequest(ClientError):
    pass


class Unauthenticated(ClientError):
    pass


class Forbidden(ClientError):
    pass


class NotFound(ClientError):
    pass


class ConflictError(ClientError):
    pass


class TooLarge(ClientError):
    pass


class ServerUnavailable(ClientError):
    retryable = True


_BY_STATUS: dict[int, type[ClientError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: ConflictError,
    413: TooLarge,
    422: InvalidRequest,
}


def error_for_status(status: int) -> type[ClientError]:
    """The class of error an HTTP status maps to (5xx: the server is not usable right now)."""
    if status >= 500:
        return ServerUnavailable
    return _BY_STATUS.get(status, ClientError)

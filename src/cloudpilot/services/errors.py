"""Errors of the use cases (the API maps each to one status).

ServiceError
├── Unauthenticated   no valid token (401)
├── Forbidden         valid token, not allowed (403)
├── BadInput          a request that cannot be accepted; ``field`` names the culprit (422)
└── TooMany           a submission over jobs.max_per_request (413)
"""


class ServiceError(Exception):
    pass


class Unauthenticated(ServiceError):
    pass


class Forbidden(ServiceError):
    pass


class BadInput(ServiceError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TooMany(ServiceError):
    pass

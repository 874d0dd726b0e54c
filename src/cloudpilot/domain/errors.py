"""Errors of the domain rules.

DomainError
├── IllegalTransition   a state change the transitions table forbids
└── InvalidJobSpec      a job description that cannot be accepted (field named)
"""


class DomainError(Exception):
    """Root of the domain's errors."""


class IllegalTransition(DomainError):
    def __init__(self, kind: str, entity_id: object, current: str, target: str) -> None:
        super().__init__(f"{kind} {entity_id} cannot go from {current!r} to {target!r}")
        self.current = current
        self.target = target


class InvalidJobSpec(DomainError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StaleLease(DomainError):
    pass

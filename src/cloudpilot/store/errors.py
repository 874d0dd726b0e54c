"""Errors of the store.

StoreError
├── NotFound        no row with that id (or not visible to the caller)
├── Conflict        the row changed state under the caller (e.g. a final job)
├── TokenReused     a VM's one-time registration token presented again
└── Fenced          a leader's write from an epoch that is no longer the current one
"""


class StoreError(Exception):
    """Root of the store's errors."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class TokenReused(StoreError):
    """A VM's registration token, already exchanged for a pilot session, presented again."""

    def __init__(self, token_id: str, vm_id: str) -> None:
        super().__init__(f"the registration token {token_id} of VM {vm_id} was already used")
        self.token_id = token_id
        self.vm_id = vm_id


class Fenced(StoreError):
    """A write of the leader's loops stamped with an old epoch: another server leads now."""

    def __init__(self, mine: int, current: int | None) -> None:
        super().__init__(f"refused: this server led at epoch {mine}, the database is at epoch {current}")
        self.mine = mine
        self.current = current

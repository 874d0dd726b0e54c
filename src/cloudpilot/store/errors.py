"""Errors of the store.

StoreError
├── NotFound        no row with that id (or not visible to the caller)
├── Conflict        the row changed state under the caller (e.g. a final job)
└── TokenReused     a VM's one-time registration token presented again
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

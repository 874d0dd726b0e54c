"""Errors of the store.

StoreError
├── NotFound        no row with that id (or not visible to the caller)
├── Conflict        the row changed state under the caller (e.g. a final job)
│   └── TooManyClasses  a submission over its owner's jobs.max_waiting_classes_per_user
├── TokenReused     a VM's one-time registration token presented again
└── Fenced          a leader's write from an epoch that is no longer the current one
"""


class StoreError(Exception):
    """Root of the store's errors."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class TooManyClasses(Conflict):
    """A submission would leave a user's jobs waiting in more requirement classes than allowed: each class costs
    the provisioner and the matcher work in every cycle, whoever owns it."""

    def __init__(self, owner: str, classes: int, limit: int) -> None:
        super().__init__(
            f"{owner}'s waiting jobs would be in {classes} requirement classes (distinct cores, memory, wall time, "
            f"tags, sites, image and priority); the limit is {limit} (jobs.max_waiting_classes_per_user): give "
            "jobs fewer distinct requirements, or submit more once some have run"
        )


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

"""Errors of the store.

StoreError
├── NotFound        no row with that id (or not visible to the caller)
└── Conflict        the row changed state under the caller (e.g. a final job)
"""


class StoreError(Exception):
    """Root of the store's errors."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass

"""Path and query integers, bounded before they reach a database: a 64-bit column cannot hold 10^30, and
asking for it must be the 404 or 400 of any id that does not exist, not a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, Field

from cloudpilot.store.errors import NotFound

MAX_ID = 2**63 - 1  # the largest value of a BIGINT column (SQLite INTEGER, PostgreSQL bigint)
MAX_SECONDS = 1e12  # durations and times in seconds: ~31,700 years, finite, and exact to the microsecond


def _existing(what: str) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not 0 < value <= MAX_ID:  # no row has such an id: say so as for any id that is missing
            raise NotFound(f"{what} {value} does not exist")
        return value

    return check


JobId = Annotated[int, Path(description="A job's id."), AfterValidator(_existing("job"))]
ClusterId = Annotated[int, Path(description="A cluster's id."), AfterValidator(_existing("cluster"))]
SubscriptionId = Annotated[int, Path(description="A subscription's id."), AfterValidator(_existing("subscription"))]
ShutdownId = Annotated[int, Path(description="A shutdown's id."), AfterValidator(_existing("shutdown"))]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]  # a moment or a duration, finite
AfterId = Annotated[int, Query(ge=0, le=MAX_ID, description="Only ids after this one (keyset pagination).")]
BoundedInt = Annotated[int, Query(ge=-MAX_ID, le=MAX_ID)]

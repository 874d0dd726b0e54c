"""Where ``now`` comes from. Services take ``now`` as an argument; only the server's loops and routes read a clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

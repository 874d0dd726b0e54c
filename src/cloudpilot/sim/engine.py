"""The event queue: a binary heap of ``(time, sequence, kind, subject)``.

The sequence number makes the order total and deterministic (events at the same time run in the order they were
scheduled) and keeps subjects from ever being compared. Events that became moot (a job of a VM that vanished, a
tick replaced by an earlier one) stay in the heap and are ignored when popped: cheaper than removing them.
"""

from __future__ import annotations

import heapq
import itertools
from enum import IntEnum
from typing import Any


class Kind(IntEnum):
    JOB_END = 0
    BOOT = 1  # a VM's pilot registers
    IDLE = 2  # a pilot's idle timeout may have come
    ARRIVAL = 3  # submitted jobs become visible to pilots waiting in a long poll
    TICK = 4  # VM monitor + provisioner
    PREEMPT = 5  # the cloud takes a VM back without warning
    EXPIRE = 6  # a VM reached its maximum lifetime
    RECLAIM = 7  # the site kills VMs above a capacity that shrank


class EventQueue:
    __slots__ = ("heap", "popped", "serial")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, Any]] = []
        self.serial = itertools.count()
        self.popped = 0  # counted by the loop that pops

    def push(self, at: float, kind: Kind, subject: Any = None) -> None:
        heapq.heappush(self.heap, (at, next(self.serial), kind, subject))

    def __len__(self) -> int:
        return len(self.heap)

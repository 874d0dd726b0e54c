"""Shared bits of the cloud driver tests: flavors, launch requests, polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from cloudpilot.clouds.base import LaunchRequest
from cloudpilot.domain.vms import Flavor

T = TypeVar("T")

FLAVORS = {
    "small": Flavor("small", cores=1, memory_mb=2048),
    "large": Flavor("large", cores=4, memory_mb=8192),
}

# Stands in for the pilot credential in user-data: it must never appear in an error message.
SECRET = "pilot-token-s3cr3t"

# Keeps a local VM running (and so counted against the quota) until it is destroyed.
BUSY_USER_DATA = f"""#cloud-config
write_files:
  - path: /etc/cloudpilot/token
    permissions: '0600'
    content: {SECRET}
runcmd:
  - sleep 60
power_state:
  mode: poweroff
"""


def launch(vm_id: str, flavor: str = "small", user_data: str = BUSY_USER_DATA) -> LaunchRequest:
    return LaunchRequest(vm_id=vm_id, vo="testvo", flavor=flavor, user_data=user_data)


def wait_for(probe: Callable[[], T], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)

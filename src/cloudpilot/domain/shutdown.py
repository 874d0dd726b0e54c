"""Shutdown codes of the vacuum model (HSF-TN-2016-04), shared by the pilot and the server.

Standard library only: the pilot imports this module.
"""

from enum import IntEnum


class ShutdownCode(IntEnum):
    SHUTDOWN_AS_REQUESTED = 100
    WORK_COMPLETED = 200
    NO_MORE_WORK = 300
    BANNED = 400
    SITE_PROBLEM = 500
    GRID_PROBLEM = 600
    TRANSIENT_PROBLEM = 700


SHUTDOWN_TEXT: dict[ShutdownCode, str] = {
    ShutdownCode.SHUTDOWN_AS_REQUESTED: "Shutdown as requested by the VM's host/hypervisor",
    ShutdownCode.WORK_COMPLETED: "Intended work completed ok",
    ShutdownCode.NO_MORE_WORK: "No more work available from task queue",
    ShutdownCode.BANNED: "Site/host/VM is currently banned/disabled from receiving more work",
    ShutdownCode.SITE_PROBLEM: "Problem detected with environment/VM provided by the site",
    ShutdownCode.GRID_PROBLEM: "Grid-wide problem with job agent or application within VM",
    ShutdownCode.TRANSIENT_PROBLEM: "Transient problem with job agent or application within VM",
}


def shutdown_message(code: ShutdownCode, detail: str = "") -> str:
    """The ``NNN text`` line of the vacuum model, with an optional detail after it."""
    text = f"{int(code)} {SHUTDOWN_TEXT[code]}"
    return f"{text}: {detail}" if detail else text

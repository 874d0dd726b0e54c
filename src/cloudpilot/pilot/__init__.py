"""The pilot: the agent that runs inside a VM (or on any machine that reaches the server).

It registers with the server, offers its free cores to the matcher, runs the payloads it is given in their own
process groups, heartbeats, uploads their outputs, reports, and halts with a vacuum-model shutdown code when
there is no more work. Standard library only (plus :mod:`cloudpilot.domain.shutdown`, itself stdlib-only), so
that the server can ship the package as one zipapp to any machine with Python 3.
"""

from __future__ import annotations

from cloudpilot.pilot.agent import Agent, Shutdown
from cloudpilot.pilot.config import PilotConfig
from cloudpilot.pilot.errors import (
    LeaseLost,
    PilotError,
    RequestRejected,
    ServerUnreachable,
    TransportError,
    UnsafeArchive,
)
from cloudpilot.pilot.fake_transport import FakeTransport
from cloudpilot.pilot.transport import HttpTransport, Transport

__all__ = [
    "Agent",
    "FakeTransport",
    "HttpTransport",
    "LeaseLost",
    "PilotConfig",
    "PilotError",
    "RequestRejected",
    "ServerUnreachable",
    "Shutdown",
    "Transport",
    "TransportError",
    "UnsafeArchive",
]

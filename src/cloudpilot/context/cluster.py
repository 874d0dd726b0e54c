"""The user-data of a cluster VM: the service's own parts, then the cluster agent, then power-off.

Three parts, in cloud-init's order of execution:

1. cloudpilot's ``#cloud-config``: ``write_files`` with the agent's configuration, its token (0600) and the agent
   itself (:mod:`cloudpilot.context.cluster_agent`, standard library only), and ``power_state`` so the VM
   powers off when the agent exits;
2. the service's parts (its rendered context): shell scripts, and cloud-config whose ``write_files`` and
   ``runcmd`` are appended to ours;
3. a last cloud-config part whose only ``runcmd`` entry runs the agent. Appended after the service's
   ``runcmd``, it starts once the service's commands have finished, so "ready" means "contextualized".

Paths go through ``${CLOUDPILOT_VM_ROOT:-}`` like the pilot's (the ``local`` cloud roots its VMs elsewhere).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cloudpilot.context import cluster_agent
from cloudpilot.context.errors import InvalidContext
from cloudpilot.context.userdata import VM_ROOT_VAR, UserDataPart, assemble_user_data

AGENT_CONFIG_FILE = "/etc/cloudpilot/agent.json"
AGENT_TOKEN_FILE = "/etc/cloudpilot/agent.token"
AGENT_SCRIPT = "/opt/cloudpilot/cluster-agent.py"


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What one cluster VM's agent is told; ``agent_token`` is bound to this VM and cluster."""

    server_url: str
    cluster_id: int
    vm_id: str
    service: str
    agent_token: str = field(repr=False)
    heartbeat_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"https?://[^\s'\"\\]+", self.server_url):
            raise InvalidContext("server_url", f"must be an http:// or https:// URL, not {self.server_url!r}")
        if not self.agent_token or any(c.isspace() or not c.isprintable() for c in self.agent_token):
            raise InvalidContext("agent_token", "must be non-empty, without spaces or control characters")
        if not (math.isfinite(self.heartbeat_seconds) and self.heartbeat_seconds > 0):
            raise InvalidContext("heartbeat_seconds", "must be a positive number of seconds")


def build_cluster_user_data(ctx: AgentContext, parts: Sequence[UserDataPart] = ()) -> str:
    """The whole user-data of one cluster VM (raises ``UserDataTooLarge`` above the clouds' limit)."""
    config = {
        "server_url": ctx.server_url,
        "cluster_id": ctx.cluster_id,
        "vm_id": ctx.vm_id,
        "service": ctx.service,
        "token_file": AGENT_TOKEN_FILE,
        "heartbeat_seconds": ctx.heartbeat_seconds,
    }
    ours = {
        "write_files": [
            {"path": AGENT_CONFIG_FILE, "permissions": "0644", "content": json.dumps(config, indent=2) + "\n"},
            {"path": AGENT_TOKEN_FILE, "permissions": "0600", "content": ctx.agent_token + "\n"},
            {"path": AGENT_SCRIPT, "permissions": "0755", "content": agent_source()},
        ],
        "power_state": {
            "mode": "poweroff",
            "delay": "now",
            "message": "cloudpilot: the cluster agent has exited; powering off",
            "condition": True,
        },
    }
    run_agent = f"python3 {_in_vm(AGENT_SCRIPT)} {_in_vm(AGENT_CONFIG_FILE)}"
    last = "#cloud-config\n" + yaml.safe_dump({"runcmd": [run_agent]}, default_flow_style=False, width=4096)
    return assemble_user_data(ours, [*parts, UserDataPart("text/cloud-config", last, "cloudpilot-agent")])


def agent_source() -> str:
    return Path(cluster_agent.__file__).read_text()


def _in_vm(path: str) -> str:
    return f'"${{{VM_ROOT_VAR}:-}}"{shlex.quote(path)}'

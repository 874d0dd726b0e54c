"""What SSH contextualization does on a VM, as one shell script (pure: no SSH here).

A golden image without cloud-init gets over SSH what the user-data would have given it: the pilot's
configuration, its one-time token, the CA and MJF environment when there are any, and the pilot zipapp itself
(copied, not downloaded: the SSH channel is ours). The pilot then starts detached and the VM powers off when it
exits, as with cloud-init's ``power_state``. The script goes to ``sh -s`` on the VM's standard input, so nothing
secret is on a command line; files are base64 here-documents.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

from cloudpilot.context.userdata import (
    ENV_FILE,
    PAYLOAD_USER,
    PILOT_WORKDIR,
    PILOT_ZIPAPP,
    PilotContext,
    cloud_config_of,
    pilot_command,
)

START_SCRIPT = "/opt/cloudpilot/start.sh"
PILOT_LOG = "/var/log/cloudpilot-pilot.log"
STARTED_MARK = "cloudpilot: pilot started"  # the script's last line when every step worked
_END = "CLOUDPILOT_EOF"


@dataclass(frozen=True, slots=True)
class SshPlan:
    script: str  # for ``sh -s`` as root (or ``sudo -n sh -s``); holds the token: never log it


def ssh_plan(ctx: PilotContext, zipapp: bytes) -> SshPlan:
    """The script that installs the pilot and its credential and starts the pilot detached."""
    config = cloud_config_of(ctx)
    lines = [
        "set -eu",
        "umask 077",
        f"mkdir -p /etc/cloudpilot /opt/cloudpilot {PILOT_WORKDIR}",
    ]
    for item in config["write_files"]:
        lines += _file(item["path"], item["content"].encode(), item["permissions"])
    lines += _file(PILOT_ZIPAPP, zipapp, "0644")
    start = ["#!/bin/sh"]
    if any(item["path"] == ENV_FILE for item in config["write_files"]):
        start.append(f"set -a; . {ENV_FILE}; set +a")
    # Power off whatever the pilot's exit status, as the user-data's power_state does: an idle VM only costs money.
    start += [pilot_command(ctx), "poweroff"]
    lines += _file(START_SCRIPT, ("\n".join(start) + "\n").encode(), "0700")
    lines += [
        f"id -u {PAYLOAD_USER} >/dev/null 2>&1 || "
        f"useradd --system --no-create-home --shell /usr/sbin/nologin {PAYLOAD_USER}",
        # setsid + nohup: the pilot outlives this SSH session; its output goes to a log on the VM.
        f"nohup setsid /bin/sh {START_SCRIPT} >{PILOT_LOG} 2>&1 </dev/null &",
        f"echo {shlex.quote(STARTED_MARK)}",
    ]
    return SshPlan("\n".join(lines) + "\n")


def _file(path: str, content: bytes, mode: str) -> list[str]:
    encoded = base64.encodebytes(content).decode()
    target = shlex.quote(path)
    return [f"base64 -d >{target} <<'{_END}'", encoded.rstrip("\n"), _END, f"chmod {mode} {target}"]

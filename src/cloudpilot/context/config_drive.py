"""What a VM with the pilot baked in (a cloud's ``context: none``) reads from its config drive: ``cloudpilot.env``.

Such an image has cloud-init disabled, so it gets no user-data; the driver attaches a small ISO labelled
:data:`CONFIG_DRIVE_LABEL` holding this one file instead, and the image's boot script
(``deploy/images/baked/boot.sh``) reads it, checks its own ``/opt/cloudpilot/pilot.pyz`` against the pinned
sha256, writes the files and runs the pilot. The file carries exactly what the user-data would: the files its
``write_files`` lists (the pilot's configuration, the one-time token, the CA and MJF environment when there are
any) and the same pilot command (``pilot_command``), so the two paths cannot drift apart.

It is shell syntax, assignments only, every value quoted with :func:`shlex.quote`: the boot script sources it.
"""

from __future__ import annotations

import shlex

from cloudpilot.context.pilot_zipapp import pilot_zipapp
from cloudpilot.context.userdata import PAYLOAD_USER, PilotContext, cloud_config_of, pilot_command

CONFIG_DRIVE_LABEL = "CLOUDPILOT"  # the ISO's volume id; the image finds it as /dev/disk/by-label/CLOUDPILOT
CONFIG_DRIVE_FILE = "cloudpilot.env"
FORMAT_VERSION = "1"  # the boot script refuses a drive of another format rather than guessing


def config_drive_env(ctx: PilotContext) -> str:
    """``cloudpilot.env`` for one VM. It holds the VM's one-time token: write it 0600 and never log it."""
    values: list[tuple[str, str]] = [
        ("CLOUDPILOT_DRIVE_FORMAT", FORMAT_VERSION),
        # Only for the boot script's log line: what it starts, where to.
        ("CLOUDPILOT_VM_ID", ctx.vm_id),
        ("CLOUDPILOT_VO", ctx.vo),
        ("CLOUDPILOT_SERVER_URL", ctx.server_url),
        # The baked pilot runs only if it is the one the server pins (the user-data's download checks the same).
        ("CLOUDPILOT_PILOT_SHA256", ctx.pilot_sha256 or pilot_zipapp().sha256),
        ("CLOUDPILOT_PAYLOAD_USER", PAYLOAD_USER),
    ]
    files = cloud_config_of(ctx)["write_files"]
    values.append(("CLOUDPILOT_FILE_COUNT", str(len(files))))
    for index, item in enumerate(files, start=1):
        values += [
            (f"CLOUDPILOT_FILE_{index}_PATH", item["path"]),
            (f"CLOUDPILOT_FILE_{index}_MODE", item["permissions"]),
            (f"CLOUDPILOT_FILE_{index}_CONTENT", item["content"]),
        ]
    values.append(("CLOUDPILOT_PILOT_COMMAND", pilot_command(ctx)))
    header = "# cloudpilot config drive (context: none), read by /opt/cloudpilot/boot.sh; holds a one-time token\n"
    return header + "".join(f"{name}={shlex.quote(value)}\n" for name, value in values)

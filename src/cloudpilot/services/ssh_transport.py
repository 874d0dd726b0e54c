"""Running one script on a VM over SSH (paramiko), behind a small port so the loop's tests pass a fake.

A VM's host key is new at its first boot and known to nobody beforehand, so it is accepted as presented and not
kept (the client's own key is what the VM checks). On QEMU user-mode networking the connection goes to
127.0.0.1 and a port QEMU forwards to the guest we just created.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class SshNotReady(Exception):
    """No SSH session yet (refused, timed out, sshd starting, key not accepted yet): try again while it boots."""


class SshScriptFailed(Exception):
    """Connected, but the script failed: final for this VM."""


@dataclass(frozen=True, slots=True)
class SshTarget:
    host: str
    port: int
    user: str
    key_file: Path
    timeout_seconds: float


class SshRunner(Protocol):
    def run(self, target: SshTarget, script: str) -> str:
        """Run ``script`` with ``sh -s`` (through ``sudo -n`` unless the user is root); its standard output."""
        ...


class ParamikoRunner:
    """The real :class:`SshRunner`."""

    def run(self, target: SshTarget, script: str) -> str:
        import paramiko

        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # see the module docstring
        try:
            try:
                client.connect(
                    target.host,
                    target.port,
                    username=target.user,
                    key_filename=str(target.key_file),
                    timeout=target.timeout_seconds,
                    banner_timeout=target.timeout_seconds,
                    auth_timeout=target.timeout_seconds,
                    allow_agent=False,
                    look_for_keys=False,
                )
            except (OSError, paramiko.SSHException, EOFError) as exc:  # TimeoutError is an OSError
                raise SshNotReady(f"{target.host}:{target.port}: {type(exc).__name__}: {exc}") from None
            command = "sh -s" if target.user == "root" else "sudo -n sh -s"
            stdin, stdout, stderr = client.exec_command(command, timeout=max(60.0, target.timeout_seconds))
            stdin.write(script)
            stdin.channel.shutdown_write()
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except (OSError, paramiko.SSHException) as exc:
            raise SshScriptFailed(f"the SSH session broke: {type(exc).__name__}: {exc}") from None
        finally:
            client.close()
        if status != 0:
            raise SshScriptFailed(f"the contextualization script exited {status}: {err.strip()[-300:]}")
        return out

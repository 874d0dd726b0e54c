"""The ``local`` cloud, the embedded default: a VM is a sandboxed process tree with a root directory of its own.

It boots from the very user-data a real VM gets (the cloud-config subset of
:mod:`~cloudpilot.clouds.local_cloudinit`), so the path from user-data to a running pilot is exercised for real.

Everything lives on disk under ``root``, so a restarted server, or a second driver object on the same ``root``,
sees the same instances::

    root/
      .lock                      serialises create and destroy across threads and processes
      <instance-id>/             one VM (ids look like ``local-1a2b3c4d5e6f``)
        instance.json            written once at create: ids, flavor and its size, tags, boot plan
        user-data                mode 0600: it carries the pilot's credential
        state.json               kept by the VM's supervisor: pending → running → stopped, or error
        supervisor.lock          held (flock) by the supervisor for as long as it lives
        supervisor.pid           the supervisor's pid, also the VM's process group id
        console.log              the VM's "serial console": supervisor notes and runcmd output
        rootfs/                  the VM's root directory (CLOUDPILOT_VM_ROOT); HOME is rootfs/root
      console/<instance-id>.log  the console of a destroyed VM, kept for tests and demos

An instance whose state file says pending or running but whose supervisor no longer holds its lock died without
halting properly (killed, or the machine rebooted): it is reported ``stopped``, like a VM that lost power.

Sandboxing is what an unprivileged process can do cheaply: a session and process group of its own, its own
working and home directories, a minimal environment, and (on Linux) a child subreaper so that processes which
start sessions of their own, like the pilot's payloads, stay in the VM and die with it. The flavor's cores and
memory are recorded but **not enforced**: an address-space limit breaks Python's thread stacks and allocator
arenas long before it limits real memory use, and pinning CPUs would need cgroups. The image is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpilot
from cloudpilot.clouds import local_vm as vm
from cloudpilot.clouds.base import TAG_MANAGED, TAG_VM_ID, Instance, InstanceState, LaunchRequest
from cloudpilot.clouds.errors import CloudConfigError, CloudUnavailable, QuotaExceeded
from cloudpilot.clouds.local_procs import is_running, signal_all, supervisor_alive, take_lock, vm_processes
from cloudpilot.domain.vms import Flavor

_ID = re.compile(r"local-[0-9a-f]{12}")
LIVE_STATES = frozenset({InstanceState.PENDING, InstanceState.RUNNING})


class LocalCloudDriver:
    """A :class:`~cloudpilot.clouds.base.CloudDriver` whose VMs are local process trees under ``root``.

    ``max_vms`` caps the instances pending or running at once (stopped ones wait to be destroyed and do not
    count). ``boot_seconds`` is how long a VM stays ``pending`` before it runs its user-data. Failure injection,
    for tests and demos: a share ``fail_share`` of boots ends in ``error`` without running anything, a share
    ``hang_share`` stays ``pending`` for ever; ``seed`` makes the draws repeatable.
    """

    # How long destroy lets the supervisor power its VM off (it gives its processes 1 s after SIGTERM) before
    # killing every process of the VM itself.
    POWER_OFF_SECONDS = vm.KILL_GRACE_SECONDS + 2.0

    def __init__(
        self,
        name: str,
        root: Path,
        flavors: dict[str, Flavor],
        max_vms: int = 10,
        boot_seconds: float = 0,
        fail_share: float = 0,
        hang_share: float = 0,
        seed: int | None = None,
        payload_user: str = "nobody",
    ) -> None:
        if max_vms < 0 or boot_seconds < 0:
            raise ValueError("max_vms and boot_seconds may not be negative")
        if not (0 <= fail_share <= 1 and 0 <= hang_share <= 1 and fail_share + hang_share <= 1):
            raise ValueError("fail_share and hang_share are shares between 0 and 1, and add up to at most 1")
        self.name = name
        self.root = Path(root).resolve()
        self.flavors = dict(flavors)
        self.max_vms = max_vms
        self.boot_seconds = boot_seconds
        self.fail_share = fail_share
        self.hang_share = hang_share
        self.payload_user = payload_user
        self._rng = random.Random(seed)
        self._spawned: dict[str, subprocess.Popen[bytes]] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            # Leftovers of a create or destroy that crashed half-way; neither is listed as an instance.
            for leftover in (self.root / ".staging", self.root / ".trash"):
                _remove_tree(leftover)

    # -- the port ------------------------------------------------------------------------------------------------

    def create(self, request: LaunchRequest) -> Instance:
        """Boot a VM from ``request.user_data``; if an instance for ``request.vm_id`` exists, return it."""
        self._reap()
        with self._locked():
            existing = [inst for inst in self._instances() if inst.vm_id == request.vm_id]
            if existing:
                return existing[0]
            flavor = self.flavors.get(request.flavor)
            if flavor is None:
                offered = ", ".join(sorted(self.flavors)) or "none"
                raise CloudConfigError(self.name, f"unknown flavor {request.flavor!r} (offered: {offered})")
            live = sum(inst.state in LIVE_STATES for inst in self._instances())
            if live >= self.max_vms:
                raise QuotaExceeded(self.name, f"{live} of at most {self.max_vms} instances are pending or running")
            return self._launch(request, flavor)

    def list(self) -> list[Instance]:
        """Every instance under ``root`` that has not been destroyed, oldest first."""
        self._reap()
        return self._instances()

    def destroy(self, instance_id: str) -> None:
        """Power the VM off (its whole process tree), keep its console, remove it; unknown ids are fine."""
        if not _ID.fullmatch(instance_id):
            return  # not one of ours, and never a path to follow
        vmdir = self.root / instance_id
        with self._locked():  # a create still starting this VM's supervisor finishes first
            if not vmdir.is_dir():
                return
        self._power_off(vmdir)
        self._reap()
        with self._locked():
            if not vmdir.is_dir():
                return  # destroyed meanwhile by another caller
            consoles = self.root / "console"
            consoles.mkdir(mode=0o700, exist_ok=True)  # runcmd output may show what the user-data held
            with contextlib.suppress(FileNotFoundError):
                os.replace(vmdir / vm.CONSOLE_FILE, consoles / f"{instance_id}.log")
            # Out of the listing in one step, then removed at leisure.
            trash = self.root / ".trash" / f"{instance_id}-{uuid.uuid4().hex[:8]}"
            trash.parent.mkdir(exist_ok=True)
            os.rename(vmdir, trash)
        _remove_tree(trash)

    # -- for tests, demos and operators --------------------------------------------------------------------------

    def vm_root(self, instance_id: str) -> Path:
        """The VM's root directory (``CLOUDPILOT_VM_ROOT`` inside it)."""
        return self.root / instance_id / vm.ROOTFS_DIR

    def console_path(self, instance_id: str) -> Path:
        """The VM's console log: in its directory while it exists, under ``root/console/`` once destroyed."""
        live = self.root / instance_id / vm.CONSOLE_FILE
        return live if live.exists() else self.root / "console" / f"{instance_id}.log"

    def state_reason(self, instance_id: str) -> str:
        """Why the VM is in ``error`` (the supervisor's words; never user-data)."""
        return str(vm.read_state(self.root / instance_id).get("reason", ""))

    def supervisor_pid(self, instance_id: str) -> int | None:
        return _read_pid(self.root / instance_id)

    # -- inside ----------------------------------------------------------------------------------------------------

    def _launch(self, request: LaunchRequest, flavor: Flavor) -> Instance:
        instance_id = f"local-{uuid.uuid4().hex[:12]}"
        created_at = time.time()
        # Built under .staging and renamed into place, so a listing never sees half a VM.
        staging = self.root / ".staging" / instance_id
        staging.parent.mkdir(exist_ok=True)
        # Searchable, not listable: payloads (another user) reach their job directories under rootfs/; the
        # user-data and the console are the supervisor's own (0600).
        staging.mkdir(mode=0o711)
        staging.chmod(0o711)
        (staging / vm.ROOTFS_DIR).mkdir()
        meta = {
            "instance_id": instance_id,
            "vm_id": request.vm_id,
            "vo": request.vo,
            "flavor": flavor.name,
            "cores": flavor.cores,
            "memory_mb": flavor.memory_mb,
            "image": request.image,
            "tags": {**request.tags, TAG_MANAGED: "true", TAG_VM_ID: request.vm_id},
            "created_at": created_at,
            "boot_seconds": self.boot_seconds,
            "boot_outcome": self._draw_boot_outcome(),
            "payload_user": self.payload_user,
        }
        (staging / vm.INSTANCE_FILE).write_text(json.dumps(meta, indent=2))
        fd = os.open(staging / vm.USER_DATA_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(request.user_data)
        vm.write_state(staging, "pending")
        # Locked before it is listed, so the VM never looks dead between here and its supervisor's start.
        lock_fd = take_lock(staging)
        vmdir = self.root / instance_id
        try:
            os.rename(staging, vmdir)
            (vmdir / vm.CONSOLE_FILE).touch(mode=0o600)  # the pilot's log: the supervisor's, not the payloads'
            with (vmdir / vm.CONSOLE_FILE).open("ab") as console:
                proc = subprocess.Popen(
                    [sys.executable, "-P", "-m", "cloudpilot.clouds.local_vm", str(vmdir), str(lock_fd)],
                    cwd=vmdir, env=_supervisor_env(), stdin=subprocess.DEVNULL, stdout=console,
                    stderr=subprocess.STDOUT, pass_fds=(lock_fd,), start_new_session=True,
                )  # fmt: skip
        except OSError as exc:
            _remove_tree(vmdir)
            _remove_tree(staging)
            raise CloudUnavailable(self.name, f"cannot start a local VM ({type(exc).__name__})") from exc
        finally:
            os.close(lock_fd)  # the supervisor holds the lock now; our copy would keep it alive after its death
        vm.write_pid(vmdir, proc.pid)  # the supervisor writes it too, in case we die before this line
        self._spawned[instance_id] = proc
        return _instance(meta, InstanceState.PENDING)

    def _draw_boot_outcome(self) -> str:
        draw = self._rng.random()
        if draw < self.fail_share:
            return vm.BOOT_FAIL
        if draw < self.fail_share + self.hang_share:
            return vm.BOOT_HANG
        return vm.BOOT_OK

    def _instances(self) -> list[Instance]:
        found: list[Instance] = []
        for vmdir in self.root.iterdir():
            if not _ID.fullmatch(vmdir.name):
                continue
            try:
                meta = json.loads((vmdir / vm.INSTANCE_FILE).read_text())
            except (OSError, ValueError):
                continue  # destroyed while we looked
            found.append(_instance(meta, _state_of(vmdir)))
        return sorted(found, key=lambda inst: (inst.created_at or 0, inst.instance_id))

    def _power_off(self, vmdir: Path) -> None:
        if supervisor_alive(vmdir):
            _wait_until(lambda: _read_pid(vmdir) is not None, 2.0)  # the supervisor's first act is to write it
        pid = _read_pid(vmdir)
        if pid is None:
            return  # its supervisor never started
        if supervisor_alive(vmdir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if _wait_until(lambda: not supervisor_alive(vmdir), self.POWER_OFF_SECONDS):
                return
            # The supervisor did not finish in time: kill all of the VM at once, supervisor included.
            signal_all(vm_processes(pid, include_supervisor=True), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _wait_until(lambda: not supervisor_alive(vmdir), 2.0)
        elif not is_running(pid):
            # A supervisor killed from outside may have left processes in its group. The group's id cannot have
            # been reused while any of them lives, so the group is still the VM's; once its pid names a new
            # process, the group is gone and we leave that process alone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def _reap(self) -> None:
        """Collect the exit status of supervisors this process started, so none lingers as a zombie."""
        for instance_id, proc in list(self._spawned.items()):
            if proc.poll() is not None:
                self._spawned.pop(instance_id, None)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _instance(meta: dict[str, Any], state: InstanceState) -> Instance:
    return Instance(
        instance_id=meta["instance_id"],
        vm_id=meta.get("tags", {}).get(TAG_VM_ID),
        state=state,
        flavor=meta.get("flavor"),
        created_at=meta.get("created_at"),
    )


def _state_of(vmdir: Path) -> InstanceState:
    try:
        state = InstanceState(vm.read_state(vmdir).get("state"))
    except ValueError:
        return InstanceState.UNKNOWN
    if state in LIVE_STATES and not supervisor_alive(vmdir):
        return InstanceState.STOPPED  # its supervisor died without halting: the VM lost power
    return state


def _read_pid(vmdir: Path) -> int | None:
    try:
        return int((vmdir / vm.PID_FILE).read_text())
    except (OSError, ValueError):
        return None


def _supervisor_env() -> dict[str, str]:
    """Just enough for the supervisor to import this very package: none of the server's secrets."""
    package_parent = str(Path(cloudpilot.__file__).resolve().parent.parent)
    return {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": package_parent, "LANG": "C.UTF-8"}


def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _remove_tree(path: Path) -> None:
    """Remove a directory even where the VM made parts of it read-only."""
    if not path.exists():
        return
    try:
        shutil.rmtree(path)
    except OSError:
        for dirpath, _dirs, _files in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(dirpath, 0o700)
        shutil.rmtree(path, ignore_errors=True)

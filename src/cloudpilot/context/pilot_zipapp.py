"""The pilot as one zipapp (``pilot.pyz``): what ``GET /pilot.pyz`` serves and what a VM's user-data pins.

It holds ``cloudpilot.pilot`` and the one module of ``cloudpilot.domain`` it uses, all standard library, so any
Python 3 on any image can run it. It is built once per process, on first use, from the installed package.

The build is reproducible: the same sources give the same bytes in every process (members sorted, fixed
timestamps and modes). That matters because the provisioner pins the zipapp's sha256 in user-data while the
VM may download it from another API process behind a load balancer (docs/contextualization.md).
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cloudpilot

ENTRY_MODULE, ENTRY_FUNCTION = "cloudpilot.pilot.cli", "run"
INTERPRETER = "/usr/bin/env python3"
# What goes in, relative to the package directory: the pilot must not need anything else.
MODULES = ("__init__.py", "domain/__init__.py", "domain/shutdown.py", "pilot/*.py")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry; any fixed one makes builds repeatable
_MAIN = f"# -*- coding: utf-8 -*-\nimport {ENTRY_MODULE}\n{ENTRY_MODULE}.{ENTRY_FUNCTION}()\n"


@dataclass(frozen=True, slots=True)
class PilotZipapp:
    content: bytes
    sha256: str  # hex digest of ``content``: the user-data pins it, the ETag carries it

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'  # quoted, as the header carries it


def build_pilot_zipapp(package_dir: Path | None = None) -> PilotZipapp:
    """Build the zipapp from ``package_dir`` (default: the installed ``cloudpilot`` package)."""
    root = package_dir or Path(cloudpilot.__file__).parent
    members: list[tuple[str, bytes]] = []
    for pattern in MODULES:
        matches = sorted(root.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"the pilot zipapp needs cloudpilot/{pattern}, missing under {root}")
        members += [(f"cloudpilot/{path.relative_to(root).as_posix()}", path.read_bytes()) for path in matches]
    members.append(("__main__.py", _MAIN.encode()))
    out = io.BytesIO()
    out.write(f"#!{INTERPRETER}\n".encode())  # a zip may carry a prefix: python3 finds the archive at its end
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    content = out.getvalue()
    return PilotZipapp(content, hashlib.sha256(content).hexdigest())


class _Cache:
    """The zipapp of this process, built by the first caller that needs it (the others wait for it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._app: PilotZipapp | None = None

    def get(self) -> PilotZipapp:
        with self._lock:
            if self._app is None:
                self._app = build_pilot_zipapp()
            return self._app


_cache = _Cache()


def pilot_zipapp() -> PilotZipapp:
    """This process's zipapp (built on the first call)."""
    return _cache.get()

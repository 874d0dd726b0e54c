"""``GET /pilot.pyz``: the pilot as one zipapp, which a VM's user-data downloads and runs with ``python3``.

It holds only code (the pilot's token comes with the user-data), so it is served without a token. It is built
once per process, on the first request, from the installed package: ``cloudpilot.pilot`` and the one module of
``cloudpilot.domain`` it uses, all standard library, so any Python 3 on any image can run it.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import threading
import zipapp
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response

import cloudpilot

router = APIRouter(tags=["pilots"])

MEDIA_TYPE = "application/zip"
ENTRY_POINT = "cloudpilot.pilot.cli:run"
INTERPRETER = "/usr/bin/env python3"
# What goes in, relative to the package directory: the pilot must not need anything else.
_MODULES = ("__init__.py", "domain/__init__.py", "domain/shutdown.py", "pilot/*.py")


@dataclass(frozen=True, slots=True)
class PilotZipapp:
    content: bytes
    etag: str  # quoted, as the header carries it


def build_pilot_zipapp(package_dir: Path | None = None) -> PilotZipapp:
    """Build the zipapp from ``package_dir`` (default: the installed ``cloudpilot`` package)."""
    root = package_dir or Path(cloudpilot.__file__).parent
    with tempfile.TemporaryDirectory(prefix="cloudpilot-pyz-") as tmp:
        # Copy into a clean tree so that __pycache__ and anything else next to the sources stays out.
        source = Path(tmp) / "src"
        for pattern in _MODULES:
            matches = sorted(root.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"the pilot zipapp needs cloudpilot/{pattern}, missing under {root}")
            for path in matches:
                target = source / "cloudpilot" / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        out = io.BytesIO()
        zipapp.create_archive(source, out, interpreter=INTERPRETER, main=ENTRY_POINT, compressed=True)
    content = out.getvalue()
    return PilotZipapp(content, f'"{hashlib.sha256(content).hexdigest()}"')


class _Cache:
    """The zipapp of this process, built by the first request that needs it (the others wait for it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._app: PilotZipapp | None = None

    def get(self) -> PilotZipapp:
        with self._lock:
            if self._app is None:
                self._app = build_pilot_zipapp()
            return self._app


_cache = _Cache()


@router.get(
    "/pilot.pyz",
    summary="The pilot zipapp (no token needed: it holds no secret)",
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: {}}}, 304: {"description": "unchanged (If-None-Match)"}},
)
def get_pilot_zipapp(request: Request) -> Response:
    app = _cache.get()
    headers = {"ETag": app.etag, "Cache-Control": "no-cache"}  # no-cache: revalidate, a new server may differ
    wanted = _etags(request.headers.get("if-none-match", ""))
    if app.etag in wanted or "*" in wanted:
        return Response(status_code=304, headers=headers)
    return Response(
        app.content,
        media_type=MEDIA_TYPE,
        headers={**headers, "Content-Disposition": 'attachment; filename="pilot.pyz"'},
    )


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compared as strong: the content is the same)."""
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}

"""Sandboxes on the user's side: packing input files reproducibly and unpacking outputs without escaping ``dest``."""

from __future__ import annotations

import contextlib
import gzip
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from cloudpilot.client.errors import ClientError, UnsafeArchive


@contextlib.contextmanager
def packed(base_dir: Path, names: tuple[str, ...]) -> Iterator[IO[bytes]]:
    """A gzipped tar of ``names`` (files or directories, relative to ``base_dir``) in a temporary file at offset 0.

    Owners and times are zeroed so the same files give the same bytes, hence the same content-addressed id on
    the server, and an unchanged sandbox is stored once however often it is submitted.
    """

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tempfile.TemporaryFile() as out:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, dereference=True) as tar,
        ):
            for name in sorted(names):
                tar.add(base_dir / name, arcname=name, filter=normalize)
        out.seek(0)
        yield out


_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python >= 3.11.4


def extract_safely(archive: IO[bytes], dest: Path) -> list[Path]:
    """Extract a (gzipped) tar into ``dest`` and return the regular files written.

    Refused, before anything is written: absolute names, ``..`` components, links that point outside ``dest``
    and special files. Each member is checked again right before it is extracted, against what is already on
    disk, so a link extracted earlier cannot redirect a later member.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []
    try:
        with tarfile.open(fileobj=archive, mode="r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check(member, root)
            for member in members:
                _check(member, root)
                if _HAS_DATA_FILTER:
                    tar.extract(member, root, filter="data")
                else:
                    tar.extract(member, root)
                if member.isfile():
                    written.append(dest / member.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ClientError(f"cannot extract the output archive into {dest}: {exc}") from exc
    return written


def _inside(root: Path, path: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _check(member: tarfile.TarInfo, root: Path) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise UnsafeArchive(f"refusing archive member {member.name!r}: absolute or with '..'")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"refusing archive member {member.name!r}: not a file, directory or link")
    target = (root / name).resolve()
    if not _inside(root, target):
        raise UnsafeArchive(f"refusing archive member {member.name!r}: it would be written outside {root}")
    if member.issym():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or not _inside(root, (root / name.parent / link).resolve()):
            raise UnsafeArchive(
                f"refusing archive member {member.name!r}: link to {member.linkname!r} points outside {root}"
            )
    if member.islnk() and not _inside(root, (root / member.linkname).resolve()):
        raise UnsafeArchive(
            f"refusing archive member {member.name!r}: hard link to {member.linkname!r} points outside {root}"
        )

"""Sandboxes on the pilot's side: unpacking an input sandbox safely, packing a job's outputs.

Both are gzipped tars. Extraction is done member by member by this module (not ``tarfile.extractall``) so that
the same checks hold on every Python 3: no absolute names, no ``..``, no special files, and links only to
places inside the job directory.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cloudpilot.pilot.errors import SandboxTooLarge, UnsafeArchive

log = logging.getLogger(__name__)

JOB_LOG = "job.log"


# --- input -----------------------------------------------------------------------------------------------------


DEFAULT_MAX_UNPACKED_BYTES = 10 * 100 * 1024 * 1024  # 10x the server's default sandbox limit
DEFAULT_MAX_UNPACKED_ENTRIES = 100_000


@dataclass(frozen=True)
class UnpackLimits:
    """What an input sandbox may unpack to: bytes of file content (``None``: the default) and entries."""

    max_bytes: int | None = None
    max_entries: int = DEFAULT_MAX_UNPACKED_ENTRIES

    @property
    def bytes(self) -> int:
        return DEFAULT_MAX_UNPACKED_BYTES if self.max_bytes is None else self.max_bytes


def extract_safely(archive: Path, dest: Path, limits: UnpackLimits = UnpackLimits()) -> list[str]:
    """Unpack the (gzipped) tar ``archive`` into ``dest``; the names of the regular files written.

    Every member is checked before anything is written; :class:`UnsafeArchive` names the first bad one, and
    :class:`SandboxTooLarge` says that the headers read so far add up to more than ``limits`` allow (a bomb
    fails at the header that crosses the line, before any byte is written). ``OSError`` (a full disk, a file
    where the archive has a directory) goes to the caller.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[str] = []
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = _checked_members(tar, limits)
            budget = [limits.bytes]
            for member in members:
                if _extract_member(tar, member, root, budget):
                    written.append(_clean_name(member.name))
    except (tarfile.TarError, EOFError) as exc:
        raise UnsafeArchive(f"not a readable tar archive: {exc}") from exc
    return written


def _checked_members(tar: tarfile.TarFile, limits: UnpackLimits) -> list[tarfile.TarInfo]:
    """Read the headers one by one (never the whole list first), checking each and the running totals."""
    members: list[tarfile.TarInfo] = []
    total = 0
    while (member := tar.next()) is not None:
        if len(members) >= limits.max_entries:
            raise SandboxTooLarge(
                f"the input sandbox has more than {limits.max_entries} entries (--max-unpacked-entries)"
            )
        _check_member(member)
        total += member.size if member.isfile() else 0
        if total > limits.bytes:
            raise SandboxTooLarge(f"the input sandbox unpacks to more than {limits.bytes} bytes (--max-unpacked-bytes)")
        members.append(member)
    return members


def _clean_name(name: str) -> str:
    return str(PurePosixPath(name))


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or member.name.startswith("\\") or "\x00" in member.name:
        raise UnsafeArchive(f"refusing archive member {member.name!r}: absolute or with '..'")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"refusing archive member {member.name!r}: a device, fifo or other special file")
    if member.issym():
        target = PurePosixPath(member.linkname)
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
        if target.is_absolute() or joined == ".." or joined.startswith("../"):
            raise UnsafeArchive(f"refusing symlink {member.name!r} -> {member.linkname!r}: it points outside")
    if member.islnk():
        target = PurePosixPath(member.linkname)
        if target.is_absolute() or ".." in target.parts:
            raise UnsafeArchive(f"refusing hard link {member.name!r} -> {member.linkname!r}: it points outside")


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def _target(root: Path, name: str) -> Path:
    """Where ``name`` lands, after resolving what is already on disk (a link extracted earlier, say)."""
    path = root / name
    parent = path.parent.resolve()
    if not _inside(root, parent):
        raise UnsafeArchive(f"refusing archive member {name!r}: its directory resolves outside the sandbox")
    return parent / path.name


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path, budget: list[int]) -> bool:
    """Write one checked member; whether it was a regular file. ``budget``: bytes still allowed (hard links copy
    their target, which the headers' sizes do not count)."""
    if PurePosixPath(member.name) in (PurePosixPath("."), PurePosixPath("")):
        return False
    path = _target(root, member.name)
    if member.isdir():
        path.mkdir(parents=True, exist_ok=True)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.is_file():
        path.unlink()  # never write through a link left by an earlier member
    if member.issym():
        os.symlink(member.linkname, path)
        return False
    if member.islnk():
        source = _target(root, member.linkname).resolve()
        if not _inside(root, source) or not source.is_file():
            raise UnsafeArchive(f"refusing hard link {member.name!r} -> {member.linkname!r}")
        budget[0] -= source.stat().st_size
        if budget[0] < 0:
            raise SandboxTooLarge("the input sandbox's hard links unpack to more than --max-unpacked-bytes")
        shutil.copyfile(source, path)
        return True
    extracted = tar.extractfile(member)
    if extracted is None:
        raise UnsafeArchive(f"archive member {member.name!r} has no data")
    with extracted, open(path, "xb") as out:
        shutil.copyfileobj(extracted, out, 1 << 20)
    # Keep the owner's execute bits (scripts), never set-id or world-writable bits.
    path.chmod((member.mode & 0o755) | stat.S_IRUSR | stat.S_IWUSR)
    return True


# --- output ----------------------------------------------------------------------------------------------------


def collect_outputs(job_dir: Path, patterns: Sequence[str], *, exclude: Container[str] = ()) -> dict[str, Path]:
    """The files matching ``patterns`` (globs relative to ``job_dir``): their names in an archive, and real paths.

    Patterns that are absolute or contain ``..`` are ignored; directories stand for their files; a symlink stands
    for the file it points to, and only if that stays inside ``job_dir``. A name whose first part is in
    ``exclude`` (files the pilot itself keeps in the job directory) is left out.
    """
    root = job_dir.resolve()
    names: dict[str, Path] = {}
    for pattern in patterns:
        parts = PurePosixPath(pattern).parts
        if not pattern or PurePosixPath(pattern).is_absolute() or ".." in parts:
            log.warning("ignoring output pattern %r: it must be relative and without '..'", pattern)
            continue
        for match in sorted(root.glob(pattern)):
            for path in _files_under(match):
                real = path.resolve()
                name = path.relative_to(root).as_posix()
                if _inside(root, real) and real.is_file() and name.split("/", 1)[0] not in exclude:
                    names.setdefault(name, real)
    return names


def pack_outputs(
    job_dir: Path,
    patterns: Sequence[str],
    archive: Path,
    *,
    exclude: Container[str] = (),
    keep: Callable[[str, Path], bool] | None = None,
    small: int = 0,
) -> tuple[list[str], bytes | None]:
    """A gzipped tar of the files :func:`collect_outputs` finds (those ``keep(name, path)`` accepts, if given)
    plus ``job.log``: the names packed, and the archive itself if it is at most ``small`` bytes — then no file
    is written (most short jobs' output is a few lines of log: a file made, read back and removed per job costs
    more than packing it) — else ``None`` and the archive is the file ``archive``."""
    names = {n: p for n, p in collect_outputs(job_dir, patterns, exclude=exclude).items() if keep is None or keep(n, p)}
    log_file = job_dir.resolve() / JOB_LOG
    if log_file.is_file() and not log_file.is_symlink():
        names[JOB_LOG] = log_file
    if small > 0 and sum(p.lstat().st_size for p in names.values()) <= small:  # gzip may not make it small enough
        packed = BytesIO()
        write_archive(names, packed)
        if packed.tell() <= small:
            return sorted(names), packed.getvalue()
        archive.write_bytes(packed.getvalue())
        return sorted(names), None
    write_archive(names, archive)
    return sorted(names), None


def write_archive(files: Mapping[str, Path], archive: Path | BinaryIO) -> None:
    """A gzipped tar of ``files`` (name in the archive -> file on disk), into a file or a stream."""
    target = {"name": archive} if isinstance(archive, Path) else {"fileobj": archive}
    with tarfile.open(mode="w:gz", format=tarfile.PAX_FORMAT, **target) as tar:  # type: ignore[call-overload]
        for name in sorted(files):
            tar.add(files[name], arcname=name, recursive=False)


def _files_under(path: Path) -> Iterator[Path]:
    if path.is_dir() and not path.is_symlink():
        for top, _dirs, files in os.walk(path):
            yield from (Path(top) / f for f in sorted(files))
    else:
        yield path

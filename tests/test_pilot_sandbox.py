"""Unpacking input sandboxes on the pilot: what lands inside the job directory, and what is refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cloudpilot.pilot.errors import UnsafeArchive
from cloudpilot.pilot.sandbox import extract_safely


def make_tar(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """A gzipped tar of ``(kind, name, data-or-link-target)`` members, kind being file, dir, sym, link or fifo."""
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(data, bytes)
                info.size, info.mode = len(data), 0o4755
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE}.get(
                kind, tarfile.FIFOTYPE
            )
            info.linkname = str(data)
            tar.addfile(info)
    return path


def test_regular_files_dirs_and_inner_links_are_extracted(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "in.tar.gz",
        [
            ("dir", "data", ""),
            ("file", "mc.py", b"print(1)"),
            ("file", "./data/events.csv", b"1,2"),
            ("sym", "latest.csv", "data/events.csv"),
            ("link", "copy.py", "mc.py"),
        ],
    )
    dest = tmp_path / "job"
    written = extract_safely(archive, dest)
    assert sorted(written) == ["copy.py", "data/events.csv", "mc.py"]
    assert (dest / "latest.csv").read_bytes() == b"1,2"
    assert (dest / "copy.py").read_bytes() == b"print(1)"
    assert (dest / "mc.py").stat().st_mode & 0o7777 == 0o755  # no set-uid bit


@pytest.mark.parametrize(
    "members",
    [
        [("file", "../escape.txt", b"x")],
        [("file", "/tmp/absolute.txt", b"x")],
        [("file", "a/../../escape.txt", b"x")],
        [("sym", "evil", "/etc/passwd")],
        [("sym", "evil", "../../etc")],
        [("link", "evil", "../outside")],
        [("fifo", "pipe", "")],
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "abs-symlink", "rel-symlink-out", "hardlink-out", "fifo"],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path: Path, members: list) -> None:
    archive = make_tar(tmp_path / "in.tar.gz", [("file", "first.txt", b"ok"), *members])
    dest = tmp_path / "deep" / "job"
    with pytest.raises(UnsafeArchive):
        extract_safely(archive, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_a_link_to_a_directory_cannot_redirect_a_later_member(tmp_path: Path) -> None:
    # "sub" -> "." is harmless by itself; "sub/x" must still land inside.
    archive = make_tar(tmp_path / "in.tar.gz", [("sym", "sub", "."), ("file", "sub/x", b"1")])
    dest = tmp_path / "job"
    extract_safely(archive, dest)
    assert (dest / "x").read_bytes() == b"1"


def test_garbage_is_not_an_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar at all")
    with pytest.raises(UnsafeArchive):
        extract_safely(bad, tmp_path / "job")

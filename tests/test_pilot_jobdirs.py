"""Recycled job directories: what a payload leaves in its directory never reaches the pilot's files."""

from __future__ import annotations

import os
from pathlib import Path

from cloudpilot.pilot.jobdirs import JobDirs


def finished_job(workdir: Path, name: str = "job-1-1") -> Path:
    job = workdir / name
    job.mkdir(parents=True)
    (job / "job.log").write_text("the payload's output\n")
    (job / "result.root").write_bytes(b"x" * 100)
    (job / "sub" / "deeper").mkdir(parents=True)
    (job / "sub" / "deeper" / "f").write_text("f")
    return job


def test_a_recycled_directory_comes_back_empty_but_for_an_empty_log(tmp_path: Path) -> None:
    dirs = JobDirs(tmp_path / "private" / "spare", keep="job.log")
    job = finished_job(tmp_path / "work")
    log_inode = (job / "job.log").stat().st_ino
    dirs.recycle(job)
    assert not job.exists()

    again = tmp_path / "work" / "job-2-1"
    dirs.make(again)
    assert [p.name for p in again.iterdir()] == ["job.log"]
    assert (again / "job.log").read_bytes() == b""
    assert (again / "job.log").stat().st_ino == log_inode  # the same file: nothing created
    dirs.make(tmp_path / "work" / "job-3-1")  # none parked: a new one
    assert list((tmp_path / "work" / "job-3-1").iterdir()) == []


def test_a_log_that_is_a_link_is_removed_never_followed(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("the pilot's secret\n")
    dirs = JobDirs(tmp_path / "private" / "spare", keep="job.log")

    job = finished_job(tmp_path / "work")
    (job / "job.log").unlink()
    (job / "job.log").symlink_to(precious)  # what a payload could leave
    dirs.recycle(job)
    hard = finished_job(tmp_path / "work", "job-2-1")
    (hard / "job.log").unlink()
    os.link(precious, hard / "job.log")
    dirs.recycle(hard)

    assert precious.read_text() == "the pilot's secret\n"  # neither truncated through the link
    for name in ("job-3-1", "job-4-1"):
        dirs.make(tmp_path / "work" / name)
        assert list((tmp_path / "work" / name).iterdir()) == []


def test_what_an_earlier_pilot_parked_is_cleared(tmp_path: Path) -> None:
    spare_root = tmp_path / "private" / "spare"
    (spare_root / "1").mkdir(parents=True)
    (spare_root / "1" / "stale").write_text("from an earlier pilot")
    dirs = JobDirs(spare_root, keep="job.log")
    dirs.recycle(finished_job(tmp_path / "work"))
    assert sorted(p.name for p in spare_root.iterdir()) == ["1"]
    assert [p.name for p in (spare_root / "1").iterdir()] == ["job.log"]


"""Job directories recycled from one job to the next.

Creating and removing a directory and its ``job.log`` for every job is what a short job's directory costs most:
on a disk whose file system must skip recently freed inodes (ext4 without a journal, common on VM images),
each creation scans past every inode freed in the last minute, so thousands of short jobs make each other's
files slower. A finished job's directory is emptied instead (its ``job.log`` truncated, kept) and parked in
the pilot's private directory; the next job's directory is a parked one renamed into place.

Only a directory whose payload tree is gone and which the pilot owns again is recycled (the job runner calls
:meth:`JobDirs.recycle` after that), so nothing of the payload user can swap a file for a link meanwhile;
still, ``job.log`` is kept only if it is a regular file with no other link, opened without following links.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

MAX_SPARE = 64  # more than any pilot runs at once, with a handover in flight for each


class JobDirs:
    """A pool of emptied job directories under ``root`` (inside the pilot's private directory)."""

    def __init__(self, root: Path, keep: str) -> None:
        self.root = root
        self.keep = keep  # the file kept (truncated) in a recycled directory: the job log
        self._free: list[Path] = []
        self._made = 0
        self._ready = False
        self._lock = threading.Lock()

    def make(self, path: Path) -> None:
        """Create the job directory ``path``: a parked one renamed into place, else a new one."""
        with self._lock:
            spare = self._free.pop() if self._free else None
        if spare is not None:
            try:
                os.rename(spare, path)
                return
            except OSError:
                shutil.rmtree(spare, ignore_errors=True)
        path.mkdir(parents=True)

    def recycle(self, path: Path) -> None:
        """Empty a finished job's directory and park it for a later job; removed instead if that fails."""
        try:
            with self._lock:
                if len(self._free) >= MAX_SPARE:
                    raise OSError("enough spare job directories")
                if not self._ready:  # what an earlier pilot on this workdir parked is not known to this one
                    shutil.rmtree(self.root, ignore_errors=True)
                    self.root.mkdir(mode=0o700, parents=True)
                    self._ready = True
                self._made += 1
                spare = self.root / str(self._made)
            self._empty(path)
            os.rename(path, spare)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            return
        with self._lock:
            self._free.append(spare)

    def _empty(self, path: Path) -> None:
        for entry in os.scandir(path):
            if entry.name == self.keep and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    fd = os.open(entry.path, os.O_WRONLY | os.O_NOFOLLOW)
                    try:
                        if os.fstat(fd).st_nlink == 1:
                            os.ftruncate(fd, 0)
                            continue
                    finally:
                        os.close(fd)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)

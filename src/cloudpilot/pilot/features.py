"""Machine/Job Features (HEPiX, HSF-TN-2016-02): reading a ``$MACHINEFEATURES``/``$JOBFEATURES`` base, writing one.

A base is a directory (key ``k`` is the file ``<dir>/k``) or an http(s) URL (``GET <url>/k``, unauthenticated).
Each key holds one value as text. Reading never raises: a missing key gives ``None``, and so does a base that
cannot be reached, so that a broken features service never takes the pilot down with it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

# The machine keys of docs/site-control.md; a base that lists its keys may add more.
MACHINE_KEYS = ("total_cpu", "hs06", "shutdowntime", "grace_secs")
DYNAMIC_MACHINE_KEYS = ("shutdowntime", "grace_secs")  # may change while the machine lives: re-read
DYNAMIC_JOB_KEYS = ("shutdowntime_job",)
JOB_KEYS = (
    "allocated_cpu", "hs06_job", "jobstart_secs", "job_id", "wall_limit_secs",
    "cpu_limit_secs", "max_rss_bytes", "shutdowntime_job", "grace_secs_job",
)  # fmt: skip

KEY = re.compile(r"[A-Za-z0-9_]{1,64}")  # also keeps a key from naming anything outside its base
MAX_VALUE_BYTES = 4096
DEFAULT_TIMEOUT = 3.0
USER_AGENT = "cloudpilot-pilot/1"


class _Unreachable(Exception):
    """The base could not be asked (as opposed to a key it does not have)."""


class FeatureSource:
    """One features base; ``None`` (or an empty string) is a base without any key."""

    def __init__(self, base: str | None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        base = (base or "").strip() or None
        if base is not None and base.startswith("file://"):
            base = urllib.parse.urlsplit(base).path
        self.base = base
        self.is_url = base is not None and base.split("://", 1)[0].lower() in ("http", "https")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"FeatureSource({self.base!r})"

    def read(self, key: str) -> str | None:
        """The value of ``key``, or ``None`` when it is missing or the base cannot be reached."""
        try:
            return self._read(key)
        except _Unreachable as exc:
            log.warning("features %s: %s", self.base, exc)
            return None

    def fetch(self, keys: Iterable[str]) -> dict[str, str | None]:
        """The values of ``keys`` (``None``: the base has no such key). A key the base could not be asked about
        is left out, so callers can keep what they knew; after the first such failure the rest are not asked
        (each would wait for the same timeout)."""
        values: dict[str, str | None] = {}
        for key in keys:
            try:
                values[key] = self._read(key)
            except _Unreachable as exc:
                log.warning("features %s unreachable, keeping the values known so far: %s", self.base, exc)
                break
        return values

    def keys(self) -> list[str]:
        """The keys the base lists (a directory's files, or the lines of ``GET <url>/``); best effort."""
        if self.base is None:
            return []
        try:
            if self.is_url:
                names = (self._get("") or "").splitlines()
            else:
                names = [p.name for p in Path(self.base).iterdir() if p.is_file()]
        except (_Unreachable, OSError):
            return []
        return sorted({n.strip() for n in names if KEY.fullmatch(n.strip())})

    def _read(self, key: str) -> str | None:
        if self.base is None or not KEY.fullmatch(key):
            return None
        if self.is_url:
            return self._get(key)
        try:
            with open(os.path.join(self.base, key), "rb") as f:
                return _text(f.read(MAX_VALUE_BYTES))
        except OSError:  # no such file (or directory): the site does not publish that key
            return None

    def _get(self, key: str) -> str | None:
        assert self.base is not None
        url = self.base.rstrip("/") + "/" + key
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return _text(answer.read(MAX_VALUE_BYTES))
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                return None
            raise _Unreachable(f"GET {url}: {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise _Unreachable(f"GET {url}: {getattr(exc, 'reason', exc)}") from None


def _text(raw: bytes) -> str | None:
    return raw.decode("utf-8", "replace").strip() or None


def as_number(value: str | None) -> float | None:
    """A value as a finite number, or ``None`` when it is missing or not a number."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def format_number(value: float) -> str:
    """Integral numbers without a decimal point (as HEPiX values usually are), others with up to 3 decimals."""
    return str(int(value)) if float(value).is_integer() else str(round(value, 3))


class FeatureDir:
    """A directory of feature files (``<dir>/<key>`` holds the value; a key whose value is ``None``, unknown, has
    no file) that remembers what it holds: writing the values it already holds costs no system call.

    ``write(values, live=False)``: nobody reads the directory (a payload's job features before it starts): a
    changed value is written over its old file in place. ``live=True``: a payload may be reading: each changed
    file is replaced at once (write, then rename), so a reader never sees half a value. Creating and removing
    files is what costs most on a VM's disk (a tenth of a millisecond or more each), which is why a payload's
    job features go into a directory reused from one payload to the next (:class:`FeatureDirs`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.slot = path.name  # one payload at a time has it: the name of that payload's other reused files
        self._held: dict[str, str] | None = None  # None: the directory is not made yet

    def write(self, values: Mapping[str, str | None], *, live: bool) -> None:
        if self._held is None:
            self.path.mkdir(parents=True, exist_ok=True)
            for stale in self.path.iterdir():  # left by an earlier pilot in this workdir: nothing may be unknown
                if not stale.is_dir():
                    stale.unlink(missing_ok=True)
            self._held = {}
        for key, value in values.items():
            old = self._held.get(key)
            if value == old or not KEY.fullmatch(key):
                continue
            path = self.path / key
            if value is None:
                path.unlink(missing_ok=True)
                del self._held[key]
                continue
            if live or old is None or not self._overwrite(path, value.encode(), len(old.encode())):
                tmp = self.path / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"  # writers may race
                tmp.write_text(value)
                os.replace(tmp, path)
            self._held[key] = value

    @staticmethod
    def _overwrite(path: Path, data: bytes, old_size: int) -> bool:
        """Write ``data`` over the file's old value; ``False`` if the file is gone (someone removed it)."""
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return False
        try:
            os.pwrite(fd, data, 0)
            if len(data) < old_size:
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        return True


class FeatureDirs:
    """The payloads' ``$JOBFEATURES`` directories, ``<root>/<n>``: one per payload running at once, each
    handed to the next payload once the previous one's process tree is gone."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._free: list[FeatureDir] = []
        self._made = 0
        self._lock = threading.Lock()

    def take(self) -> FeatureDir:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._made += 1
            n = self._made
        return FeatureDir(self.root / str(n))

    def give_back(self, features: FeatureDir) -> None:
        with self._lock:
            self._free.append(features)

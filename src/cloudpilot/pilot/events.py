"""Event checkpoints: the pilot's side of ``PUT /jobs/{id}/events``.

A payload of a job with ``events`` appends the line ``i`` to its checkpoint file once the output of event ``i``
is written. About twice a second the pilot reads what was appended, and when finished events follow the last
one uploaded without a gap it sends them as one chunk: the output files written or changed since the previous
chunk, with the range ``first..last``. The server then knows that those events never need computing again, even
if the VM is lost. Chunks go strictly in order, one at a time.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Container, Sequence
from pathlib import Path

from cloudpilot.pilot.sandbox import JOB_LOG, collect_outputs, write_archive

log = logging.getLogger(__name__)

CHECK_EVERY = 0.5

Stamp = tuple[int, int]  # (mtime in ns, size): a file whose stamp changed since it was sent is sent again


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class EventUploader:
    """Watches one payload's checkpoint file in a thread of its own, uploading chunks with ``upload``.

    ``upload(first, last, archive)`` delivers one chunk (with retries; it raises if it cannot). When it fails
    for good while the job is not being dropped anyway (``aborted()``), the error is kept in :attr:`error`,
    ``on_error(reason)`` is called (to stop the payload) and the watching ends.
    """

    def __init__(
        self,
        *,
        job_dir: Path,
        patterns: Sequence[str],
        exclude: Container[str],
        checkpoint: Path,
        first_event: int,
        events: int | None,
        archive: Path,
        upload: Callable[[int, int, Path], object],
        aborted: Callable[[], bool],
        on_error: Callable[[str], None],
        label: str,
        interval: float = CHECK_EVERY,
    ) -> None:
        self.job_dir, self.patterns, self.exclude = job_dir, patterns, exclude
        self.checkpoint, self.archive, self.events = checkpoint, archive, events
        self.upload, self.aborted, self.on_error = upload, aborted, on_error
        self.label, self.interval = label, interval
        self.next_event = first_event
        self.error: Exception | None = None
        self._finished: set[int] = set()  # finished events at or after next_event, read but not yet uploaded
        self._offset = 0  # how far the checkpoint file has been read (up to the end of its last full line)
        self._sent: dict[str, Stamp] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"events-{label}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """End the watching; ``wait`` for an upload under way (it must be over before the next one starts)."""
        self._done.set()
        if wait and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def flush(self, *, final: bool = False) -> bool:
        """Upload the events finished since the last chunk, if any; whether a chunk was sent.

        ``final``: the payload has ended, so a last line without its newline counts too.
        """
        with self._lock:
            self._read_checkpoint(final)
            last = self.next_event - 1
            while last + 1 in self._finished:
                last += 1
            if last < self.next_event:
                return False
            first = self.next_event
            files = {
                name: path
                for name, path in collect_outputs(self.job_dir, self.patterns, exclude=self.exclude).items()
                if name != JOB_LOG and not self.already_sent(name, path)
            }
            stamps = {name: _stamp(path) for name, path in files.items()}  # before packing: see Stamp
            try:
                write_archive(files, self.archive)
                self.upload(first, last, self.archive)
            finally:
                self.archive.unlink(missing_ok=True)
            self._sent.update({name: stamp for name, stamp in stamps.items() if stamp is not None})
            self._finished.difference_update(range(first, last + 1))
            self.next_event = last + 1
            log.info("%s: events %d-%d uploaded (%s)", self.label, first, last, ", ".join(sorted(files)) or "no files")
            return True

    def already_sent(self, name: str, path: Path) -> bool:
        """Whether this very version of the file went with a chunk (the final output can leave it out)."""
        stamp = self._sent.get(name)
        return stamp is not None and stamp == _stamp(path)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.flush()
            except Exception as exc:  # handed over to the job's thread through self.error
                if not self.aborted():
                    log.error("%s: event upload failed: %s", self.label, exc)
                    self.error = exc
                    self.on_error(f"event upload failed: {exc}")
                return

    def _read_checkpoint(self, final: bool) -> None:
        try:
            with open(self.checkpoint, "rb") as f:
                if os.fstat(f.fileno()).st_size < self._offset:
                    self._offset = 0  # rewritten from scratch: read it again (finished events are a set)
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = len(data) if final else data.rfind(b"\n") + 1  # a line still being written waits for its newline
        self._offset += end
        for line in data[:end].split(b"\n"):
            try:
                event = int(line.strip())
            except ValueError:
                continue  # blank or garbled: no event of ours
            if event >= self.next_event and (self.events is None or event < self.events):
                self._finished.add(event)

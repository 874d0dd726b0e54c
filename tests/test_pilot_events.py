"""Event checkpoints: chunks of finished events uploaded in order, resumed attempts, no output sent twice."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudpilot.domain.shutdown import ShutdownCode
from cloudpilot.pilot.errors import LeaseLost
from cloudpilot.pilot.events import EventUploader
from cloudpilot.pilot.fake_transport import FakeTransport
from cloudpilot.pilot.transport import HttpTransport
from tests.test_pilot_agent import PY, Background, make_agent, states

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")

# Event i: write ev-i.out, append i to the checkpoint, then wait for the test to let it go on (gates/go-i), so
# that which files exist when the pilot packs a chunk does not depend on timing.
EVENTS_PAYLOAD = """
import os, sys, time
gates = sys.argv[1]
first, n = int(os.environ["CLOUDPILOT_FIRST_EVENT"]), int(os.environ["CLOUDPILOT_EVENTS"])
open("first.txt", "w").write(str(first))
for i in range(first, n):
    open(f"ev-{i}.out", "w").write(f"event {i}")
    with open(os.environ["CLOUDPILOT_CHECKPOINT_FILE"], "a") as f:
        f.write(f"{i}\\n")
    end = time.time() + 20
    while not os.path.exists(os.path.join(gates, f"go-{i}")) and time.time() < end:
        time.sleep(0.02)
open("summary.txt", "w").write("all done")
"""
OUTPUTS = ["first.txt", "ev-*.out", "summary.txt"]


def names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return sorted(tar.getnames())


def contents(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def chunk_ranges(fake: FakeTransport, job: int) -> list[tuple[int, int, int]]:
    return [(c.first, c.last, c.attempt) for c in fake.event_chunks.get(job, [])]


def release(fake: FakeTransport, job: int, gates: Path, events: range) -> None:
    """Let the payload go past each event once the pilot has uploaded it."""
    for i in events:
        assert fake.wait_until(lambda i=i: any(c.last >= i for c in fake.event_chunks.get(job, []))), f"event {i}"
        (gates / f"go-{i}").touch()


def test_checkpointed_events_are_uploaded_in_order_with_their_files(tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    fake = FakeTransport()
    job = fake.add_job(PY, ["-c", EVENTS_PAYLOAD, str(gates)], events=4, output_files=OUTPUTS)
    fake.go_unreachable(2, methods={"upload_events"})
    delays: list[float] = []
    bg = Background(make_agent(tmp_path, fake, sleep=delays.append))
    release(fake, job, gates, range(4))
    shutdown = bg.wait()

    assert shutdown.code is ShutdownCode.WORK_COMPLETED
    assert states(fake, job) == ["running", "done"]
    assert chunk_ranges(fake, job) == [(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]
    chunks = [contents(c.data) for c in fake.event_chunks[job]]
    assert chunks[0] == {"first.txt": b"0", "ev-0.out": b"event 0"}
    assert chunks[1:] == [{f"ev-{i}.out": f"event {i}".encode()} for i in (1, 2, 3)]
    assert names(fake.outputs[job]) == ["job.log", "summary.txt"]  # nothing sent twice
    assert delays == [1.0, 2.0]  # the first chunk was retried while the server was unreachable
    last_chunk = fake.calls_of("upload_events")[-1].at
    assert last_chunk < fake.calls_of("upload_output")[0].at


def test_a_resumed_job_starts_at_the_first_event_not_uploaded(tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    fake = FakeTransport()
    job = fake.add_job(PY, ["-c", EVENTS_PAYLOAD, str(gates)], events=4, output_files=OUTPUTS)
    first = make_agent(tmp_path / "vm1", fake, idle_timeout=30)
    bg = Background(first)
    release(fake, job, gates, range(1))
    assert fake.wait_until(lambda: chunk_ranges(fake, job) == [(0, 0, 1), (1, 1, 1)])
    first.stop()  # the VM goes away during event 2
    assert bg.wait().code is ShutdownCode.SHUTDOWN_AS_REQUESTED
    assert states(fake, job) == ["running"] and job not in fake.outputs

    fake.requeue(job)
    bg = Background(make_agent(tmp_path / "vm2", fake))
    release(fake, job, gates, range(2, 4))
    assert bg.wait().code is ShutdownCode.WORK_COMPLETED

    assert chunk_ranges(fake, job) == [(0, 0, 1), (1, 1, 1), (2, 2, 2), (3, 3, 2)]
    sent = [name for c in fake.event_chunks[job] for name in names(c.data)]
    assert contents(fake.event_chunks[job][2].data) == {"first.txt": b"2", "ev-2.out": b"event 2"}
    assert sorted(n for n in sent if n.startswith("ev-")) == [f"ev-{i}.out" for i in range(4)]  # each once
    assert names(fake.outputs[job]) == ["job.log", "summary.txt"]
    assert states(fake, job) == ["running", "running", "done"]


def test_the_last_events_are_flushed_when_the_payload_ends(tmp_path: Path) -> None:
    code = (
        "import os\n"
        "for i in range(3):\n"
        "    open(f'ev-{i}.out', 'w').write(str(i))\n"
        "    open(os.environ['CLOUDPILOT_CHECKPOINT_FILE'], 'a').write(str(i) + ('\\n' if i < 2 else ''))\n"
        "open('ev-1.out', 'w').write('1, corrected')\n"
    )
    fake = FakeTransport()
    job = fake.add_job(PY, ["-c", code], events=3, output_files=["ev-*.out"])
    make_agent(tmp_path, fake).run()
    # it ends before the first look at its checkpoint: one chunk, even the last line without its newline
    assert chunk_ranges(fake, job) == [(0, 2, 1)]
    assert contents(fake.event_chunks[job][0].data) == {"ev-0.out": b"0", "ev-1.out": b"1, corrected", "ev-2.out": b"2"}
    assert names(fake.outputs[job]) == ["job.log"]
    assert states(fake, job) == ["running", "done"]


def test_a_job_without_events_gets_no_checkpoint_variables(tmp_path: Path) -> None:
    code = (
        "import json, os; json.dump(sorted(k for k in os.environ if 'EVENT' in k or 'CHECKPOINT' in k), open('e', 'w'))"
    )
    fake = FakeTransport()
    job = fake.add_job(PY, ["-c", code], output_files=["e"])
    make_agent(tmp_path, fake).run()
    with tarfile.open(fileobj=io.BytesIO(fake.outputs[job])) as tar:
        assert json.load(tar.extractfile("e")) == []  # type: ignore[arg-type]
    assert fake.calls_of("upload_events", failed=None) == []


# --- the watcher on its own ----------------------------------------------------------------------------------


class Chunks:
    """``upload`` for an :class:`EventUploader`: keeps (first, last, names) of each chunk."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, list[str]]] = []

    def __call__(self, first: int, last: int, archive: Path) -> None:
        self.sent.append((first, last, names(archive.read_bytes())))


def uploader(tmp_path: Path, upload: Chunks, *, first_event: int = 0, events: int | None = 10) -> EventUploader:
    job_dir = tmp_path / "job"
    job_dir.mkdir(exist_ok=True)
    return EventUploader(
        job_dir=job_dir,
        patterns=["*.out", "*"],
        exclude={".ckpt"},
        checkpoint=job_dir / ".ckpt",
        first_event=first_event,
        events=events,
        archive=tmp_path / "chunk.tar.gz",
        upload=upload,
        aborted=lambda: False,
        on_error=lambda reason: None,
        label="job-1-1",
    )


def test_a_chunk_needs_finished_events_without_a_gap(tmp_path: Path) -> None:
    chunks = Chunks()
    watcher = uploader(tmp_path, chunks, first_event=2, events=6)
    job_dir, ckpt = tmp_path / "job", tmp_path / "job" / ".ckpt"
    assert watcher.flush() is False  # no checkpoint yet
    for i in (2, 4):
        (job_dir / f"ev-{i}.out").write_text(str(i))
    (job_dir / "job.log").write_text("log")
    ckpt.write_text("1\n4\n2\ngarbage\n7\n")  # 1 is done already, 7 is no event of this job
    assert watcher.flush() is True
    assert chunks.sent == [(2, 2, ["ev-2.out", "ev-4.out"])]  # 3 is missing: 4 waits; job.log never goes
    with ckpt.open("a") as f:
        f.write("3")  # no newline yet: the payload may still be writing "35"
    assert watcher.flush() is False
    (job_dir / "ev-3.out").write_text("3")
    (job_dir / "ev-2.out").write_text("2, rewritten")
    with ckpt.open("a") as f:
        f.write("\n5")
    assert watcher.flush() is True
    assert chunks.sent[-1] == (3, 4, ["ev-2.out", "ev-3.out"])  # what changed since the last chunk
    assert watcher.flush(final=True) is True  # the payload has ended: its last line counts without a newline
    assert chunks.sent[-1] == (5, 5, [])
    assert watcher.already_sent("ev-3.out", job_dir / "ev-3.out")
    assert not watcher.already_sent("job.log", job_dir / "job.log")


def test_a_failed_chunk_is_sent_again_whole(tmp_path: Path) -> None:
    tries: list[int] = []
    chunks = Chunks()

    def flaky(first: int, last: int, archive: Path) -> None:
        tries.append(first)
        if len(tries) == 1:
            raise LeaseLost("boom", status=409)
        chunks(first, last, archive)

    watcher = uploader(tmp_path, chunks)
    watcher.upload = flaky
    (tmp_path / "job" / "a.out").write_text("a")
    (tmp_path / "job" / ".ckpt").write_text("0\n")
    with pytest.raises(LeaseLost):
        watcher.flush()
    assert watcher.flush() is True
    assert chunks.sent == [(0, 0, ["a.out"])]
    assert not (tmp_path / "chunk.tar.gz").exists()


# --- over HTTP -----------------------------------------------------------------------------------------------


class PutStub(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        PutStub.seen.append({"path": self.path, "type": self.headers.get("Content-Type"), "body": body})
        status = 409 if "first=9" in self.path else 200
        payload = json.dumps({"events_done": 5} if status == 200 else {"error": {"code": "conflict"}}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def put_stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PutStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_transport_puts_event_chunks(put_stub: str, tmp_path: Path) -> None:
    archive = tmp_path / "chunk.tar.gz"
    archive.write_bytes(os.urandom(300))
    t = HttpTransport(put_stub, "tok")
    assert t.upload_events(7, 2, 3, 4, archive) == {"events_done": 5}
    seen = PutStub.seen[-1]
    assert seen["path"] == "/api/v1/jobs/7/events?lease_token=2&first=3&last=4"
    assert seen["body"] == archive.read_bytes() and seen["type"] == "application/octet-stream"
    with pytest.raises(LeaseLost):  # out of order, or the lease is gone
        t.upload_events(7, 2, 9, 9, archive)

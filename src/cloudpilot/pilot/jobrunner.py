"""One job on this pilot, from its lease to its report: input, payload, heartbeats, event chunks, output, report.

The payload runs in its own directory with its own ``$JOBFEATURES`` (``.jobfeatures/`` there) and the pilot's
mirror of the machine features as ``$MACHINEFEATURES``. For a job with ``events`` it also gets a checkpoint
file, which :class:`~cloudpilot.pilot.events.EventUploader` watches; the final output then holds only what no
event chunk carried already (and ``job.log``).

Each job runs in a thread of its own. Results are kept (in the job directory and the thread) until they are
delivered: while the server is unreachable every call is retried with backoff for ``give_up_seconds``. A 409
means the lease is someone else's now, and the job is dropped without another word; so is a job whose owner
killed it. Any other 4xx is fatal for the job and is logged.
"""

from __future__ import annotations

import base64
import enum
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cloudpilot.pilot.assignment import Assignment
from cloudpilot.pilot.config import PilotConfig
from cloudpilot.pilot.errors import GaveUp, LeaseLost, ProtocolError, RequestRejected, Stopped, UnsafeArchive
from cloudpilot.pilot.events import EventUploader
from cloudpilot.pilot.features import FeatureDirs
from cloudpilot.pilot.heartbeat import Heartbeater
from cloudpilot.pilot.isolation import PRIVATE_DIR, clear_record, give, record, take_back
from cloudpilot.pilot.jobdirs import JobDirs
from cloudpilot.pilot.logtail import read_tail
from cloudpilot.pilot.payload import Outcome, Payload, Usage, supervise
from cloudpilot.pilot.retry import with_retries
from cloudpilot.pilot.sandbox import JOB_LOG, UnpackLimits, extract_safely, pack_outputs
from cloudpilot.pilot.site import SiteView
from cloudpilot.pilot.transport import REPORT_EXTENSIONS, Transport

log = logging.getLogger(__name__)
T = TypeVar("T")

# Variables of the pilot that a payload must not inherit.
PRIVATE_ENV = ("CLOUDPILOT_TOKEN",)
# What the pilot keeps in a job's directory for its payload; never part of the outputs. (The job features live
# beside the job directory: the pilot rewrites them while the payload runs, never inside a directory the
# payload user owns.)
JOBFEATURES_DIR = ".jobfeatures"
CHECKPOINT_FILE = ".cloudpilot-checkpoint"
PROGRESS_FILE = ".cloudpilot-progress"
PILOT_FILES = frozenset({JOBFEATURES_DIR, CHECKPOINT_FILE, PROGRESS_FILE})
# A payload still running after this long is reported running; one that ends sooner is reported once, at its
# end, with how long it ran (``ran_seconds``): a job of a few milliseconds costs one report, not two.
RUNNING_REPORT_AFTER = 1.0
INLINE_OUTPUT_BYTES = 64 * 1024  # the server's limit for an output inline in the report (docs/rest-api.md)


class JobEnd(enum.Enum):
    """How the pilot parted with a job."""

    DELIVERED = "delivered"  # output uploaded and final state reported
    DROPPED = "dropped"  # lease lost or job killed by its owner: nothing more to say
    REJECTED = "rejected"  # the server refused a call about it (a 4xx other than 409)
    GAVE_UP = "gave up"  # the server stayed unreachable
    STOPPED = "stopped"  # the pilot is leaving
    BROKEN = "broken"  # a local error (a full disk, say) kept the pilot from finishing it


class _Aborted(Exception):
    """The job was stopped by its heartbeat (kill, lease lost) or by the pilot; raised between steps."""


class JobRunner:
    """Runs one :class:`Assignment` in a thread; the agent is told when its cores are free and when it is over."""

    def __init__(
        self,
        assignment: Assignment,
        *,
        transport: Transport,
        config: PilotConfig,
        site: SiteView,
        heartbeat_every: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        sleep: Callable[[float], object],
        stop: threading.Event,
        on_cores_free: Callable[[JobRunner], None],
        on_end: Callable[[JobRunner], None],
        feature_dirs: FeatureDirs,
        job_dirs: JobDirs,
        on_answer: Callable[[dict[str, Any]], object] | None = None,
        next_offer: Callable[[JobRunner], dict[str, Any] | None] | None = None,
        on_next: Callable[[JobRunner, dict[str, Any]], object] | None = None,
    ) -> None:
        self.job, self.lease = assignment.job, assignment.lease
        self.next_offer, self.on_next = next_offer, on_next
        self.transport, self.config, self.site = transport, config, site
        self.clock, self.wall_clock, self.sleep, self.stop_all = clock, wall_clock, sleep, stop
        self.on_cores_free, self.on_end = on_cores_free, on_end
        self.job_dir = config.workdir / self.job.label
        self.private = config.workdir / PRIVATE_DIR
        self.feature_dirs, self.job_dirs = feature_dirs, job_dirs
        self.features = feature_dirs.take()  # $JOBFEATURES, reused: given back once the payload is gone
        self.checkpoint_file = self.job_dir / CHECKPOINT_FILE
        self.progress_file = self.job_dir / PROGRESS_FILE
        self.archive = self.private / f"{self.job.label}.output.tar.gz"
        self.events_archive = self.private / f"{self.job.label}.events.tar.gz"
        self.end: JobEnd | None = None
        self.abort_reason: str | None = None
        self._abort = threading.Event()
        self._payload: Payload | None = None
        self.launched = threading.Event()  # its payload has been started (or will never be)
        self._dir_ours = True  # False from the moment the job directory is the payload user's until its tree is gone
        self._outcome: Outcome | None = None
        self._cores_freed = False
        self._events: EventUploader | None = None
        self._started_at: float | None = None  # UNIX time the payload started
        self._ran_from: float | None = None  # the payload's start on the monotonic clock, until reported running
        self._features_lock = threading.Lock()
        self._features_live = False  # the payload runs: its job features may be rewritten
        self._features_released = False
        self._heartbeat_started = False
        self._heartbeat = Heartbeater(
            transport, self.job.id, self.lease.token, heartbeat_every, self._status, self.abort, self.job.label,
            on_answer=on_answer,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._main, name=self.job.label, daemon=True)

    # --- control from the agent -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def abort(self, reason: str) -> None:
        """Stop the payload now and drop the job without reporting anything more."""
        if self.abort_reason is None:
            self.abort_reason = reason
        self._abort.set()

    def refresh_features(self) -> None:
        """Rewrite the payload's job features (the shutdown time may have moved), while the payload runs."""
        with self._features_lock:
            if not self._features_live:
                return
            try:
                self.features.write(self._job_features(), live=True)
            except OSError as exc:
                log.error("%s: cannot update its job features: %s", self.job.label, exc)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # --- the job ----------------------------------------------------------------------------------------------

    def _main(self) -> None:
        label = self.job.label
        try:
            self.end = self._run()
        except GaveUp as exc:
            log.error("%s: giving up: %s; its results stay in %s", label, exc, self.job_dir)
            self.end = JobEnd.GAVE_UP
        except LeaseLost as exc:
            log.warning("%s: lease lost (%s); dropping the job", label, exc.message)
            self.end = JobEnd.DROPPED
        except RequestRejected as exc:
            log.error("%s: the server refused %s; dropping the job", label, exc.message)
            self.end = JobEnd.REJECTED
        except (_Aborted, Stopped):
            log.info("%s: dropped (%s)", label, self.abort_reason or "the pilot is stopping")
            self.end = JobEnd.STOPPED if self.stop_all.is_set() else JobEnd.DROPPED
        except OSError as exc:  # this machine's fault (a full disk): the lease expires, another pilot retries
            log.error("%s: local error, dropping the job: %s", label, exc)
            self.end = JobEnd.BROKEN
        finally:
            self.launched.set()
            self._abort.set()  # a payload still running is stopped below
            self._heartbeat.stop()
            if self._events is not None:
                self._events.stop(wait=False)
            if self._payload is not None and self._payload.poll() is None:
                self._payload.stop(self.config.kill_grace_seconds)
            self._free_cores()
            if self.end is not JobEnd.GAVE_UP:
                self._clean_up()
            self.on_end(self)

    def _run(self) -> JobEnd:
        job, token = self.job, self.lease.token
        command = " ".join([job.executable, *job.arguments])
        log.info("%s: %s on %d core(s): %s", job.label, job.name or job.id, job.cores, command)
        if self.job_dir.exists():
            shutil.rmtree(self.job_dir)
        self.job_dirs.make(self.job_dir)
        if job.input_sandbox:
            self._keep_alive()  # a download may take longer than the lease
            problem = self._fetch_input()
            if problem is not None:
                self._report({"state": "failed", "exit_code": None, "reason": problem})
                return JobEnd.DELIVERED
        outcome = self._outcome = self._execute()
        ran_for = None if self._ran_from is None else round(max(0.0, self.clock() - self._ran_from), 3)
        # With a slot handover (the final report asks for the slot's next job) the cores stay this job's until
        # that report is answered; otherwise they are free as soon as the payload has ended.
        handover = self.next_offer is not None and self.on_next is not None and self.transport.report_extensions
        if not handover:
            self._free_cores()
        events = self._events
        if events is not None:
            events.stop()
            if events.error is not None:
                raise events.error
        if outcome.aborted:
            raise _Aborted
        keep = None
        if events is not None:
            events.flush(final=True)  # the last events, before the output that the server takes as the end
            keep = lambda name, path: not events.already_sent(name, path)  # noqa: E731
        small = INLINE_OUTPUT_BYTES if self.transport.report_extensions else 0  # it may go with the report
        names, packed = pack_outputs(
            self.job_dir, job.output_files, self.archive, exclude=PILOT_FILES, keep=keep, small=small
        )
        usage = outcome.usage
        final: dict[str, Any] = {
            "state": outcome.state,
            "exit_code": outcome.exit_code,
            "reason": outcome.reason or None,
            "cpu_seconds": usage.cpu_seconds,
            "max_rss_bytes": usage.max_rss_bytes or None,  # 0: ended before it could be measured
        }
        if ran_for is not None:  # it ended before its running report
            final["ran_seconds"] = ran_for
        if packed is None:
            if handover:  # a big output: the slot is not held while it uploads
                handover = False
                self._free_cores()
            log.info("%s: %s; uploading %s", job.label, outcome.reason or "exit code 0", ", ".join(names))
            self._keep_alive()
            self._deliver("upload the output", lambda: self.transport.upload_output(job.id, token, self.archive))
        else:  # a few KiB: it goes with the report, no upload of its own
            final["output"] = base64.b64encode(packed).decode("ascii")
        if handover:
            assert self.next_offer is not None
            offer = self.next_offer(self)
            if offer is not None:
                final["next"] = offer
        answer = self._final_report(final)
        log.info("%s: %s; reported %s, the server says %s (output: %s)", job.label, outcome.reason or "exit code 0",
                 outcome.state, answer.get("state", "?"), ", ".join(names) or "nothing")  # fmt: skip
        following = answer.get("next")
        if isinstance(following, dict) and self.on_next is not None:
            self.on_next(self, following)  # takes over these cores before they are freed below
        self._free_cores()
        return JobEnd.DELIVERED

    def _report_running(self) -> None:
        self._keep_alive()
        self._report({"state": "running"})
        self._ran_from = None

    def _keep_alive(self) -> None:
        """Start the job's heartbeats (once): when its payload has run a while, or before a long transfer. A
        job of milliseconds never needs them: its lease outlives it many times over."""
        if not self._heartbeat_started:
            self._heartbeat_started = True
            self._heartbeat.start()

    def _final_report(self, final: dict[str, Any]) -> dict[str, Any]:
        """The final report; a server that predates inline outputs and slot handovers (it refuses the fields
        with a 422) gets the old sequence: the output uploaded, then a plain report."""
        try:
            return self._report(final)
        except RequestRejected as exc:
            if exc.status != 422 or not (REPORT_EXTENSIONS & final.keys()):
                raise
        log.warning("%s: the server knows no inline output nor handover; using upload and report", self.job.label)
        self.transport.report_extensions = False  # for every later job too
        final.pop("next", None)
        if final.pop("ran_seconds", None) is not None:
            self._report_running()
        output = final.pop("output", None)
        if output is not None:
            self.archive.write_bytes(base64.b64decode(output))  # it was packed in memory only
            call = lambda: self.transport.upload_output(self.job.id, self.lease.token, self.archive)  # noqa: E731
            self._deliver("upload the output", call)
        return self._report(final)

    def _fetch_input(self) -> str | None:
        """Download and unpack the input sandbox; the reason the job cannot run, or ``None``."""
        job = self.job
        archive = self.private / f"{job.label}.input.tar.gz"
        try:
            token = self.lease.token
            self._deliver("download the input", lambda: self.transport.download_input(job.id, token, archive))
            limits = UnpackLimits(self.config.max_unpacked_bytes, self.config.max_unpacked_entries)
            files = extract_safely(archive, self.job_dir, limits)
            log.info("%s: input sandbox unpacked (%d files)", job.label, len(files))
            return None
        except RequestRejected as exc:
            log.error("%s: cannot get the input sandbox: %s", job.label, exc.message)
            return f"input sandbox unavailable: {exc.message}"
        except (UnsafeArchive, OSError) as exc:
            log.error("%s: bad input sandbox: %s", job.label, exc)
            return f"bad input sandbox: {exc}"
        finally:
            archive.unlink(missing_ok=True)

    def _execute(self) -> Outcome:
        job = self.job
        log_path = self.job_dir / JOB_LOG
        with self._features_lock:
            self._started_at = self.wall_clock()
            self.features.write(self._job_features(), live=False)  # nothing reads it before the payload
            self._features_live = True
        user = self.config.payload_user
        try:
            log_path.touch()
            self._dir_ours = False
            give(self.job_dir, user)  # the payload user's from here until its tree is gone
            payload = self._payload = Payload.start(
                self._command(),
                cwd=self.job_dir,
                env=self._environment(),
                log_path=log_path,
                progress_file=self.progress_file,
                user=user,
            )
        except OSError as exc:
            self.launched.set()
            with self._features_lock:
                self._features_live = False
            with open(log_path, "a") as f:
                f.write(f"cloudpilot: cannot start {job.executable!r}: {exc}\n")
            return Outcome(None, start_error=str(exc))
        self.launched.set()
        pid_record = record(self.private, payload.pid, self.features.slot)
        self._ran_from = self.clock()
        try:
            # The running report goes once the payload has run a while (or at once, with events to upload, or
            # to a server that knows no ran_seconds): its round trip never delays the start. A refusal (lease
            # lost, job killed meanwhile) stops the payload as one during the run would.
            if job.events is not None or not self.transport.report_extensions:
                self._report_running()
            if job.events is not None:
                self._events = self._event_uploader()
                self._events.start()
            return supervise(
                payload,
                wall_seconds=job.wall_seconds,
                abort=self._abort,
                grace=self.config.kill_grace_seconds,
                clock=self.clock,
                on_running=None if self._ran_from is None else self._report_running,
                running_after=RUNNING_REPORT_AFTER,
            )
        finally:
            with self._features_lock:
                self._features_live = False
            if payload.poll() is not None:  # its whole tree is gone (the supervisor kills it before it reports)
                clear_record(pid_record)
                take_back(self.job_dir, user)
                self._dir_ours = True
                self._release_features()  # before the final report, which may start the next payload

    def _job_features(self) -> dict[str, str | None]:
        job, cfg = self.job, self.config
        memory_mb = job.memory_mb
        if memory_mb is None and cfg.memory_mb is not None:
            memory_mb = cfg.memory_mb * job.cores // cfg.cores  # its cores' share, as the agent reserves it
        assert self._started_at is not None
        return self.site.job_features(
            job_id=job.id,
            cores=job.cores,
            wall_seconds=job.wall_seconds,
            memory_bytes=None if memory_mb is None else memory_mb * 1024 * 1024,
            started=self._started_at,
        )

    def _event_uploader(self) -> EventUploader:
        job, token = self.job, self.lease.token

        def upload(first: int, last: int, archive: Path) -> object:
            call = lambda: self.transport.upload_events(job.id, token, first, last, archive)  # noqa: E731
            return self._deliver(f"upload events {first}-{last}", call)

        return EventUploader(
            job_dir=self.job_dir,
            patterns=job.output_files,
            exclude=PILOT_FILES,
            checkpoint=self.checkpoint_file,
            first_event=job.first_event,
            events=job.events,
            archive=self.events_archive,
            upload=upload,
            aborted=self._abort.is_set,
            on_error=self.abort,
            label=job.label,
        )

    def _command(self) -> list[str]:
        """The payload's argv, inside ``apptainer exec`` with ``--container apptainer:IMAGE``."""
        argv = [self._executable(), *self.job.arguments]
        container = self.config.container
        if container is None:
            return argv
        image = container.removeprefix("apptainer:")
        return ["apptainer", "exec", "--pwd", str(self.job_dir), "--bind", str(self.job_dir), image, *argv]

    def _executable(self) -> str:
        """A bare name that is a file of the input sandbox runs from there; anything else is looked up on PATH."""
        exe = self.job.executable
        local = self.job_dir / exe
        return str(local) if "/" not in exe and local.is_file() else exe

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        env.update(self.job.environment)
        env["CLOUDPILOT_JOB_ID"] = str(self.job.id)
        env["CLOUDPILOT_PROGRESS_FILE"] = str(self.progress_file)
        env["CLOUDPILOT_CORES"] = str(self.job.cores)
        user = self.config.payload_user
        if user is not None:  # its own account: nothing of root's home or temp space
            env.update(HOME=str(self.job_dir), TMPDIR=str(self.job_dir), USER=user.name, LOGNAME=user.name)
        env["JOBFEATURES"] = str(self.features.path)
        env["MACHINEFEATURES"] = str(self.site.mirror_dir)
        if self.job.events is not None:
            env["CLOUDPILOT_EVENTS"] = str(self.job.events)
            env["CLOUDPILOT_FIRST_EVENT"] = str(self.job.first_event)
            env["CLOUDPILOT_CHECKPOINT_FILE"] = str(self.checkpoint_file)
        return env

    # --- talking to the server -------------------------------------------------------------------------------

    def _report(self, body: dict[str, Any]) -> dict[str, Any]:
        doc = {"lease_token": self.lease.token, **body}
        return self._deliver(f"report {body['state']}", lambda: self.transport.report(self.job.id, doc))

    def _deliver(self, what: str, call: Callable[[], T]) -> T:
        """``call()`` with retries while the server is unreachable; nothing at all once the job is aborted."""

        def attempt() -> T:
            if self._abort.is_set():
                raise _Aborted
            try:
                return call()
            except ProtocolError as exc:
                raise RequestRejected(str(exc)) from exc

        return with_retries(
            attempt,
            what=f"{self.job.label}: {what}",
            give_up_seconds=self.config.give_up_seconds,
            clock=self.clock,
            sleep=self.sleep,
            stop=self.stop_all,
        )

    def _status(self) -> dict[str, Any]:
        """The heartbeat's body: usage and progress of the payload so far."""
        payload = self._payload
        if payload is None:
            return {"cpu_seconds": None, "max_rss_bytes": None, "progress": None}
        usage = payload.usage() if payload.poll() is not None else payload.sample()
        rss = usage.max_rss_bytes or None
        status = {"cpu_seconds": usage.cpu_seconds, "max_rss_bytes": rss, "progress": payload.progress()}
        tail = read_tail(self.job_dir / JOB_LOG)  # what `cloudpilot logs` and the dashboard show while it runs
        if tail is not None:
            status["log_tail"] = tail
        return status

    # --- bookkeeping ------------------------------------------------------------------------------------------

    def _free_cores(self) -> None:
        if not self._cores_freed:
            self._cores_freed = True
            self.on_cores_free(self)

    def _release_features(self) -> None:
        """Hand $JOBFEATURES to the next payload (once; only when this payload's tree is gone)."""
        if not self._features_released:
            self._features_released = True
            self.feature_dirs.give_back(self.features)

    def _clean_up(self) -> None:
        for path in (self.archive, self.events_archive, self.progress_file):
            path.unlink(missing_ok=True)
        self._release_features()
        if self.config.keep_job_dirs:
            return
        if self._dir_ours:  # nothing of the payload user is left to touch it
            self.job_dirs.recycle(self.job_dir)
        else:
            shutil.rmtree(self.job_dir, ignore_errors=True)

    @property
    def usage(self) -> Usage:
        return self._outcome.usage if self._outcome is not None else Usage()

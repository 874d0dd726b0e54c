"""The pilot's command line: ``python -m cloudpilot.pilot`` and ``cloudpilot pilot`` both end up in :func:`main`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

from cloudpilot.pilot.agent import Agent
from cloudpilot.pilot.config import PilotConfig, detect_cores, detect_memory_mb
from cloudpilot.pilot.isolation import make_undumpable, resolve_payload_user
from cloudpilot.pilot.transport import HttpTransport

log = logging.getLogger("cloudpilot.pilot")
TOKEN_ENV = "CLOUDPILOT_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cloudpilot pilot",
        description="Run jobs from a cloudpilot server on this machine until there is no more work.",
    )
    p.add_argument("--server", required=True, metavar="URL", help="the server's base URL, e.g. https://tq:8080")
    p.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        metavar="PEM",
        help="trust the CA certificates in this file for an https server (besides the system's)",
    )
    p.add_argument("--token", metavar="TOKEN", help=f"a pilot token (default: ${TOKEN_ENV})")
    p.add_argument("--token-file", type=Path, metavar="FILE", help="read the pilot token from this file instead")
    p.add_argument(
        "--delete-token-file",
        action="store_true",
        help="remove the token file once read (a VM's one-time registration token: no payload may find it)",
    )
    p.add_argument(
        "--payload-user",
        default=None,
        metavar="USER",
        help="as root, run payloads as USER (default: cloudpilot-payload if it exists, else nobody)",
    )
    p.add_argument(
        "--container", default=None, metavar="apptainer:IMAGE", help="run each payload in `apptainer exec IMAGE`"
    )
    p.add_argument(
        "--max-unpacked-bytes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="fail a job whose input sandbox unpacks to more (default: 10x the server's sandbox limit)",
    )
    p.add_argument(
        "--max-unpacked-entries",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="fail a job whose input sandbox has more entries",
    )
    p.add_argument("--cores", type=_positive_int, default=None, help="cores to offer (default: all usable)")
    p.add_argument("--memory-mb", type=_positive_int, default=None, help="memory to offer (default: MemTotal)")
    p.add_argument("--idle-timeout", type=_seconds, default=600.0, metavar="S", help="leave after S s without work")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR", help="where jobs run (default: a temp dir)")
    p.add_argument("--tags", default="", metavar="a,b", help="tags this pilot offers (comma-separated)")
    p.add_argument("--site", default=None, help="the site this pilot runs at")
    p.add_argument("--cloud", default=None, help="the cloud this pilot runs on")
    p.add_argument("--image", default=None, help="the endorsed image this machine runs (jobs may require it)")
    p.add_argument("--lifetime", type=_seconds, default=None, metavar="S", help="seconds this pilot may live")
    p.add_argument("--wait-seconds", type=_wait, default=20.0, metavar="S", help="length of one long poll (0-60)")
    p.add_argument(
        "--give-up-seconds", type=_seconds, default=3600.0, metavar="S", help="retry an unreachable server this long"
    )
    p.add_argument(
        "--machinefeatures",
        default=os.environ.get("MACHINEFEATURES") or None,
        metavar="DIR|URL",
        help="this machine's Machine Features (default: $MACHINEFEATURES)",
    )
    p.add_argument(
        "--jobfeatures",
        default=os.environ.get("JOBFEATURES") or None,
        metavar="DIR|URL",
        help="this machine's job slot's Job Features (default: $JOBFEATURES)",
    )
    p.add_argument(
        "--features-refresh", type=_seconds, default=60.0, metavar="S", help="re-read shutdown times every S s"
    )
    p.add_argument("--keep-job-dirs", action="store_true", help="keep each job's directory after it is delivered")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a pilot; the process exit status (0 for shutdown codes below 500, 1 otherwise, 2 for bad usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse has printed what to say
        return exc.code if isinstance(exc.code, int) else 2
    _setup_logging(args.log_level)
    make_undumpable()  # before the token is read: its /proc entries are root's from the start
    token = _token(args)
    os.environ.pop(TOKEN_ENV, None)  # not for payloads, nor for anything else this process starts
    if not token:
        parser.print_usage(sys.stderr)
        print(f"error: a pilot token is required (--token, --token-file or ${TOKEN_ENV})", file=sys.stderr)
        return 2
    try:
        payload_user = resolve_payload_user(args.payload_user)
        transport = HttpTransport(args.server, token, ssl_context=_ssl_context(args.ca_file))
        config = PilotConfig(
            workdir=args.workdir or Path(tempfile.mkdtemp(prefix="cloudpilot-pilot-")),
            cores=args.cores or detect_cores(),
            memory_mb=args.memory_mb if args.memory_mb is not None else detect_memory_mb(),
            idle_timeout=args.idle_timeout,
            tags=tuple(t.strip() for t in args.tags.split(",") if t.strip()),
            site=args.site,
            cloud=args.cloud,
            image=args.image or None,
            lifetime=args.lifetime,
            wait_seconds=args.wait_seconds,
            give_up_seconds=args.give_up_seconds,
            keep_job_dirs=args.keep_job_dirs,
            machinefeatures=args.machinefeatures,
            jobfeatures=args.jobfeatures,
            features_refresh=args.features_refresh,
            payload_user=payload_user,
            container=args.container,
            max_unpacked_bytes=args.max_unpacked_bytes,
            max_unpacked_entries=args.max_unpacked_entries,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    agent = Agent(transport, config)
    with _stop_on_signals(agent.stop):
        shutdown = agent.run()
    print(shutdown.message, file=sys.stderr)
    return shutdown.exit_status


def run() -> NoReturn:
    """``sys.exit(main())``: the entry point for a zipapp (``python -m zipapp -m cloudpilot.pilot.cli:run``)."""
    sys.exit(main())


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """The system's CAs plus ``ca_file``'s (``None``: urllib's default, the system's); ValueError if unusable."""
    if ca_file is None:
        return None
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--ca-file {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None
    return context


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token).strip()
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
            if args.delete_token_file:
                args.token_file.unlink()  # the token now lives in this process's memory only
            return token
        except OSError as exc:
            print(f"error: cannot read the token file: {exc}", file=sys.stderr)
            return ""
    return os.environ.get(TOKEN_ENV, "").strip()


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``stop`` (only where signals can be handled: the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.warning("received %s; killing the payloads and leaving", signal.Signals(signum).name)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _setup_logging(level: str) -> None:
    """Timestamped lines on stderr for the pilot's loggers, set up once per process."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (a test runner or a CLI may swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _wait(text: str) -> float:
    value = _seconds(text)
    if value > 60:
        raise argparse.ArgumentTypeError(f"must be at most 60 (the server's limit), not {value}")
    return value

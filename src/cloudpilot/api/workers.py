"""``cloudpilot server --workers N``: N server processes on one port (PostgreSQL only; docs/deployment.md).

uvicorn starts each worker in a fresh interpreter and imports the app there, so what ``cloudpilot server``
parsed travels in the environment (:data:`WORKER_ENV`) and :func:`worker_app` builds the services in the worker.
Every worker is a whole server: it serves the API and matching, hears the others' new work and revocations
through PostgreSQL, and competes for leadership like a server on another machine. Counters and histograms of
all workers are summed through ``PROMETHEUS_MULTIPROC_DIR`` (services/metrics.py), a fresh directory per run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from cloudpilot.services.metrics import MULTIPROC_ENV

WORKER_ENV = "CLOUDPILOT_WORKER"  # JSON: config, data_dir, public_url, log_level, log_format
APP = "cloudpilot.api.workers:worker_app"
HTTP_PROTOCOL = "cloudpilot.api.http_server:HeadTimeoutProtocol"  # by name: a worker imports it itself


def prepare_workers(config: Path | None, data_dir: Path, public_url: str, log_level: str, log_format: str) -> Path:
    """In the parent: hand the workers their settings and a fresh, empty metrics directory (files of an earlier
    run would be summed with this one's); returns that directory."""
    chosen = os.environ.get(MULTIPROC_ENV)
    if chosen:  # the operator's choice (a tmpfs, say): emptied, as prometheus_client requires
        metrics_dir = Path(chosen)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
    else:
        metrics_dir = Path(tempfile.mkdtemp(prefix="cloudpilot-metrics-"))
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    os.environ[WORKER_ENV] = json.dumps(
        {
            "config": str(config.resolve()) if config is not None else None,
            "data_dir": str(data_dir.resolve()),
            "public_url": public_url,
            "log_level": log_level,
            "log_format": log_format,
        }
    )
    return metrics_dir


def worker_options(options: dict[str, Any]) -> dict[str, Any]:
    """``uvicorn_options`` for workers: the protocol by import path (a class made at run time cannot be sent
    to a new interpreter; :func:`worker_app` sets its header timeout there)."""
    return {**options, "http": HTTP_PROTOCOL}


def worker_app() -> FastAPI:
    """The app of one worker (uvicorn's factory, run in the worker process)."""
    from cloudpilot.api.app import create_app
    from cloudpilot.api.http_server import HeadTimeoutProtocol
    from cloudpilot.api.logs import configure_logging
    from cloudpilot.config import load_config
    from cloudpilot.services.container import Services

    settings = json.loads(os.environ[WORKER_ENV])
    configure_logging(settings["log_level"], settings["log_format"])
    config = load_config(Path(settings["config"]) if settings["config"] else None)
    HeadTimeoutProtocol.header_timeout = config.server.header_timeout_seconds
    HeadTimeoutProtocol.max_header_bytes = config.server.max_header_bytes
    services = Services.build(config, Path(settings["data_dir"]))
    services.public_url = settings["public_url"]
    return create_app(services)

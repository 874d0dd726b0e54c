"""The FastAPI application and the background loops it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from starlette.concurrency import run_in_threadpool

from cloudpilot import __version__
from cloudpilot.api import accounting, clusters, images, jobs, mjf, pilot_zipapp, pilots, sites, tokens, vms
from cloudpilot.api.errors import install_error_handlers
from cloudpilot.api.guard import RequestGuard
from cloudpilot.api.http_server import DRAIN_STATE_KEY
from cloudpilot.api.metrics import router as metrics_router
from cloudpilot.api.middleware import RequestMiddleware
from cloudpilot.api.notify import WorkNotifier
from cloudpilot.api.responses import json_response
from cloudpilot.domain.wake_budget import WakeBudget
from cloudpilot.services.container import Services
from cloudpilot.services.leadership import Change
from cloudpilot.store.errors import Fenced
from cloudpilot.web import install as install_web_pages

log = logging.getLogger("cloudpilot.server")


IMAGES_INTERVAL = 30.0  # how often image lists are looked at (each has its own refresh_seconds)


async def _every(  # type: ignore[no-untyped-def]
    interval: float,
    name: str,
    tick,
    services: Services,
    wake: asyncio.Event | None = None,
    due_at: Callable[[], float | None] = lambda: None,
) -> None:
    """Run ``tick(now)`` every ``interval``, or sooner when ``wake`` is set or at ``due_at()`` (a time the last
    tick asked to run again at), while this server leads; a failing tick is logged with its traceback and
    retried at the next turn."""
    budget = WakeBudget(time.monotonic())  # paces woken and early ticks (a loop without ``wake`` has neither)
    while True:
        if wake is not None:
            wake.clear()  # wakes from here on are for work this tick may not see: they run the next one
        try:
            if services.leadership.leading:
                result = await run_in_threadpool(tick, services.clock.now())
                if result:
                    log.info("%s: %d handled", name, len(result))
        except Fenced as exc:  # leadership was lost during the tick: the store refused its writes
            log.warning("%s stopped: %s", name, exc)
        except Exception:
            log.exception("%s failed; retrying in %.0f s", name, interval)
        if wake is None:
            await asyncio.sleep(interval)
            continue
        now = time.monotonic()
        budget.spend(now)
        wait = interval
        due = due_at()
        if due is not None:  # an early tick the last one asked for is paced like a woken one
            wait = min(wait, max(due - services.clock.now(), budget.delay(now)))
        deadline = now + max(0.0, wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=max(0.0, wait))
            # Woken: at once if the budget allows, else when it does (or at the timer, if sooner).
            now = time.monotonic()
            await asyncio.sleep(min(budget.delay(now), max(0.0, deadline - now)))


async def _poll_leadership(services: Services, wake: asyncio.Event) -> None:
    """Take or check leadership once; a server that just took over runs its provisioning cycle at once."""
    try:
        change = await run_in_threadpool(services.leadership.poll, services.clock.now(), services.reaper.resume)
    except Exception:
        log.exception("leadership: taking over failed; trying again at the next poll")
        return
    if change is Change.GAINED:
        wake.set()


async def _lead(services: Services, wake: asyncio.Event) -> None:
    while True:
        await asyncio.sleep(services.leadership.poll_seconds)
        await _poll_leadership(services, wake)


def create_app(services: Services, run_loops: bool = True) -> FastAPI:
    notifier = WorkNotifier()
    services.work_listeners.append(notifier.notify)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Callable[[], None]]]:
        notifier.bind(asyncio.get_running_loop())
        loops: list[asyncio.Task[None]] = []
        if run_loops:
            # Other server processes of the database: their new work and revocations reach this one.
            await run_in_threadpool(services.start_signals)
            reaper = services.reaper
            wake = asyncio.Event()
            # The loops below tick only while this server leads (services/leadership.py). Taking over, it
            # first resumes the leases: time without a reaper does not count against them (services/reaper.py).
            await _poll_leadership(services, wake)
            loops.append(asyncio.create_task(_lead(services, wake)))
            loops.append(asyncio.create_task(_every(reaper.interval, "lease reaper", reaper.tick, services)))
            # One loop, monitor then provisioner, so they never act on the same VM at once; new work wakes
            # it, so a job waiting with no VM up does not wait for the next interval too. Without clouds it
            # still runs: it explains why work waits (for pilots, then).
            interval = services.config.provisioner.interval_seconds
            loop = asyncio.get_running_loop()
            services.work_listeners.append(lambda: loop.call_soon_threadsafe(wake.set))
            cycle = _every(
                interval, "provisioning cycle", services.provision, services, wake, lambda: services.provisioner.due_at
            )
            loops.append(asyncio.create_task(cycle))
            # Image lists: refresh those due, fetch images to register, drain VMs of revoked images.
            loops.append(asyncio.create_task(_every(IMAGES_INTERVAL, "image lists", services.images.tick, services)))
        try:
            # Lifespan state reaches the HTTP protocol (http_server.py), which drains on a graceful shutdown.
            yield {DRAIN_STATE_KEY: notifier.drain}
        finally:
            for task in loops:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Local VMs are the leader's machine's processes: they stop with it (keep_vms_on_stop). A follower
            # leaves them alone: they are another server's.
            if run_loops and services.leadership.leading:
                stopped = await run_in_threadpool(services.vm_monitor.stop_with_server, services.clock.now())
                if stopped:
                    log.info("server stopping: %s", "; ".join(stopped))
            if run_loops:  # another server takes over at its next poll, not when PostgreSQL notices us gone
                await run_in_threadpool(services.leadership.release)
                if services.signals is not None:
                    await run_in_threadpool(services.signals.stop)
                    services.signals = None

    app = FastAPI(
        title="cloudpilot",
        version=__version__,
        description="Task queue, matcher and pilots for scientific batch workloads on clouds.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.notifier = notifier
    install_error_handlers(app)
    # Inside RequestMiddleware, so refused bodies and URLs are counted and logged like any other request.
    app.add_middleware(RequestGuard, max_body_bytes=services.config.server.max_body_bytes)
    app.add_middleware(RequestMiddleware)
    # The pilots' routes first: a pilot's match and report are most of a busy server's requests, and each
    # request is checked against the routes in order (no path of one router matches another's).
    app.include_router(pilots.router)
    app.include_router(jobs.router)
    app.include_router(tokens.router)
    app.include_router(pilot_zipapp.router)
    app.include_router(vms.router)
    app.include_router(accounting.router)
    app.include_router(sites.router)
    app.include_router(mjf.router)
    app.include_router(clusters.router)
    app.include_router(images.router)
    app.include_router(metrics_router)
    install_web_pages(app)  # /ui/: the dashboard (cloudpilot.web, docs/dashboard.md)
    _describe_submission(app)

    @app.get("/api/v1/health", tags=["server"], summary="Liveness and version")
    def health() -> Response:
        # "leader": whether this process runs the provisioner, VM monitor, reaper and images (one per database).
        return json_response({"status": "ok", "version": __version__, "leader": services.leadership.leading})

    return app


def _describe_submission(app: FastAPI) -> None:
    """Adds the schemas ``POST /jobs``'s body refers to (it reads the raw body, so FastAPI does not know them)
    to the OpenAPI description, once, when it is first built."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            named = build().setdefault("components", {}).setdefault("schemas", {})
            clash = [name for name, schema in jobs.SUBMISSION_SCHEMAS.items() if named.get(name, schema) != schema]
            if clash:  # two different models of one name: a client would read the wrong one
                raise RuntimeError(f"OpenAPI schemas named twice: {', '.join(clash)}")
            named.update(jobs.SUBMISSION_SCHEMAS)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

"""Dependencies shared by the routers: the services of this app and the caller's identity; and, for the pilots'
hot calls that skip dependency injection, the same pieces called directly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from cloudpilot.domain.auth import Principal
from cloudpilot.services.container import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


P = ParamSpec("P")
T = TypeVar("T")


def principal_of(request: Request, authorization: str | None) -> Principal:
    services: Services = request.app.state.services
    return services.auth.authenticate(authorization, services.clock.now())


async def current_principal(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Principal:
    return principal_of(request, authorization)


def caller(request: Request) -> Principal:
    """The caller's identity, for a route that takes no dependencies (the pilots' hot calls)."""
    return principal_of(request, request.headers.get("authorization"))


async def store_call(services: Services, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func`` (a use case that writes to the store) from a hot route: on SQLite in the event loop, which is
    cheaper than the thread hop (one writer anyway); on PostgreSQL in the thread pool, so that the loop serves
    other requests while the database answers."""
    if services.db.is_sqlite:
        return func(*args, **kwargs)
    return await run_in_threadpool(func, *args, **kwargs)


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(current_principal)]

"""Dependencies shared by the routers: the services of this app and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from cloudpilot.domain.auth import Principal
from cloudpilot.services.container import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


async def current_principal(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Principal:
    services: Services = request.app.state.services
    return services.auth.authenticate(authorization, services.clock.now())


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(current_principal)]

"""``/api/v1/tokens``: admins issue, list and revoke scoped tokens (a secret is shown once, at issue)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from cloudpilot.api.deps import PrincipalDep, ServicesDep
from cloudpilot.api.params import MAX_SECONDS
from cloudpilot.api.responses import json_response
from cloudpilot.domain.auth import Role
from cloudpilot.services.auth import require
from cloudpilot.services.tokens import issue_token

router = APIRouter(prefix="/api/v1", tags=["tokens"])


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    name: str = Field(min_length=1, max_length=200)
    vo: str | None = None
    site: str | None = None
    expires_at: float | None = Field(None, ge=0, le=MAX_SECONDS, description="UNIX seconds; must be in the future.")


@router.post("/tokens", status_code=201, summary="Issue a token (admin); the secret is shown once")
def create_token(body: TokenBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.ADMIN)
    issued = issue_token(
        services.tokens,
        body.role,
        body.name,
        services.clock.now(),
        vo=body.vo,
        site=body.site,
        expires_at=body.expires_at,
    )
    return json_response({"id": issued.id, "token": issued.token}, 201)


@router.get("/tokens", summary="List tokens without their secrets (admin)")
def list_tokens(
    principal: PrincipalDep,
    services: ServicesDep,
    role: Role | None = None,
    include_inactive: bool = Query(False, alias="all", description="Also revoked and expired tokens."),
) -> Response:
    require(principal, Role.ADMIN)
    found = services.tokens.list(services.clock.now(), role, include_inactive)
    return json_response({"tokens": [asdict(t) for t in found]})


@router.delete("/tokens/{token_id}", summary="Revoke a token (admin)")
def revoke_token(token_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.ADMIN)
    services.tokens.revoke(token_id, services.clock.now())
    services.auth.revoked()
    return json_response({"id": token_id, "revoked": True})

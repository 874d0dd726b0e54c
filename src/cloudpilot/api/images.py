"""``/api/v1/images``: image lists subscribed to, the images they endorse and their state, revocations
(admins and site admins; users may list the images)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from cloudpilot.api.deps import PrincipalDep, ServicesDep
from cloudpilot.api.params import SubscriptionId
from cloudpilot.api.responses import json_response
from cloudpilot.domain.auth import Role
from cloudpilot.services.auth import require
from cloudpilot.services.images import DEFAULT_REFRESH_SECONDS
from cloudpilot.store.images import Subscription

router = APIRouter(prefix="/api/v1/images", tags=["images"])


class SubscribeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="Where the list (JSON, HEPiX format) is published.")
    endorser_key: str = Field(
        max_length=4000, description="The endorser's Ed25519 public key: PEM, or the base64 of its 32 raw bytes."
    )
    signature_url: str | None = Field(None, max_length=2000, description="Default: the list's URL + '.sig'.")
    endorser_name: str | None = Field(None, max_length=500, description="The hv:endorser DN the list must name.")
    refresh_seconds: float = Field(DEFAULT_REFRESH_SECONDS, ge=10, description="How often the list is fetched.")


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=1000)


def _subscription(sub: Subscription) -> dict[str, Any]:
    return sub.public()


@router.get("", summary="Images held, revoked or mapped by a cloud, with their state and why")
def list_images(principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.SITE, Role.USER)
    images = services.images
    return json_response({"enforced": images.enforced(), "images": images.list(services.clock.now())})


@router.get("/subscriptions", summary="Image lists subscribed to (admin, site admin)")
def list_subscriptions(principal: PrincipalDep, services: ServicesDep) -> Response:
    subs = services.images.subscriptions(principal)
    return json_response({"subscriptions": [_subscription(s) for s in subs]})


@router.post("/subscriptions", status_code=201, summary="Subscribe to an endorser's list (admin, site admin)")
async def subscribe(body: SubscribeBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    sub = await run_in_threadpool(
        services.images.subscribe,
        principal,
        body.url,
        body.endorser_key,
        services.clock.now(),
        signature=body.signature_url,
        endorser_name=body.endorser_name,
        refresh_seconds=body.refresh_seconds,
    )
    return json_response(_subscription(sub), 201)


@router.post("/subscriptions/{sub_id}/refresh", summary="Fetch a subscribed list again now (admin, site admin)")
async def refresh(sub_id: SubscriptionId, principal: PrincipalDep, services: ServicesDep) -> Response:
    done = await run_in_threadpool(services.images.refresh, sub_id, services.clock.now(), principal)
    return json_response({**_subscription(done.subscription), "changed": done.changed})


@router.get("/subscriptions/{sub_id}/list", summary="The list held, as verified, and its signature")
def held_list(sub_id: SubscriptionId, principal: PrincipalDep, services: ServicesDep) -> Response:
    document, signature = services.images.held_list(principal, sub_id)
    return json_response({"list": document, "signature": signature})


@router.delete("/subscriptions/{sub_id}", summary="Unsubscribe: its images are no longer endorsed")
def unsubscribe(sub_id: SubscriptionId, principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response(_subscription(services.images.unsubscribe(principal, sub_id)))


@router.get("/{identifier}", summary="One image: its state, why, its list entry and the clouds that map it")
def get_image(identifier: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.SITE, Role.USER)
    return json_response(services.images.get(identifier, services.clock.now()))


@router.post("/{identifier}/revoke", summary="Revoke an image: never booted again, its VMs drain (admin, site admin)")
def revoke(identifier: str, body: RevokeBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response(services.images.revoke(principal, identifier, body.reason, services.clock.now()))


@router.post("/{identifier}/reinstate", summary="Lift a revocation (admin, site admin)")
def reinstate(identifier: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response(services.images.reinstate(principal, identifier, services.clock.now()))

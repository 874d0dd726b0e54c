"""``GET /metrics``: the Prometheus text format (admins only unless ``metrics.public``; docs/rest-api.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from cloudpilot.api.deps import ServicesDep, principal_of
from cloudpilot.domain.auth import Role
from cloudpilot.services import metrics
from cloudpilot.services.auth import require
from cloudpilot.services.gauges import StoreGauges
from cloudpilot.store.stats import StatsRepository

router = APIRouter(tags=["server"])


def _gauges(request: Request) -> StoreGauges:
    """One collector per app (tests run several apps in one process)."""
    state = request.app.state
    if getattr(state, "gauges", None) is None:
        services = state.services
        state.gauges = StoreGauges(StatsRepository(services.db), services.vms, services.config, services.clock)
    return state.gauges


@router.get("/metrics", summary="Prometheus metrics (admin, or anyone with metrics.public)")
def get_metrics(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    if not services.config.metrics.public:
        require(principal_of(request, authorization), Role.ADMIN)
    return Response(metrics.exposition(_gauges(request)), media_type=CONTENT_TYPE_LATEST)

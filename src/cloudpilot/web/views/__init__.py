"""The pages, one module per view; every route under ``/ui`` with errors rendered as pages (:class:`WebRoute`)."""

from fastapi import APIRouter

from cloudpilot.web.routing import WebRoute
from cloudpilot.web.views import accounting, auth, clouds, clusters, jobs, overview, sites

router = APIRouter(prefix="/ui", route_class=WebRoute, include_in_schema=False)
for module in (auth, overview, jobs, clouds, sites, accounting, clusters):
    router.include_router(module.router)

"""Sites (site admins and admins): pledges against use per VO, scheduled shutdowns with forms to drain a VM, a
cloud or the whole site by a deadline and to cancel, and VO switches."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from cloudpilot.api.params import ShutdownId
from cloudpilot.domain.auth import Role
from cloudpilot.services.auth import require
from cloudpilot.services.errors import BadInput
from cloudpilot.web.render import render
from cloudpilot.web.routing import FormDep, PrincipalDep, ServicesDep, WebRoute

router = APIRouter(route_class=WebRoute)  # errors as pages (web/routing.py)
MAX_MINUTES = 366 * 24 * 60


@router.get("/sites")
def sites(request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.SITE)
    if not principal.is_admin:
        return RedirectResponse(f"/ui/sites/{principal.site}", 303)
    return render(request, "sites.html", sites=services.config.known_sites())


@router.get("/sites/{site}")
def site_page(site: str, request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    now = services.clock.now()
    status = services.sites.status(principal, site, now)
    draining = {vm_id: s for s in status["shutdowns"] for vm_id in s["vms"]}
    vos = sorted(
        set(status["pledges"]) | set(status["running_cores"]) | set(status["disabled_vos"]) | set(services.config.vos)
    )
    return render(
        request,
        "site.html",
        site=site,
        status=status,
        vms=services.dashboard.site_vms(principal, site),
        draining=draining,
        vos=vos,
        now=now,
    )


def _minutes(form: dict[str, str]) -> float:
    text = form.get("minutes", "").strip()
    try:
        minutes = float(text)
    except ValueError:
        raise BadInput(f"minutes: {text!r} is not a number of minutes", "minutes") from None
    if not 0 < minutes <= MAX_MINUTES:
        raise BadInput(f"minutes: must be more than 0 and at most {MAX_MINUTES}", "minutes")
    return minutes * 60


@router.post("/sites/{site}/shutdowns")
def drain(site: str, principal: PrincipalDep, services: ServicesDep, form: FormDep) -> Response:
    now = services.clock.now()
    services.sites.schedule_shutdown(
        principal,
        site,
        now,
        cloud=form.get("cloud") or None,
        vm_id=form.get("vm_id") or None,
        deadline=now + _minutes(form),
        reason=form.get("reason", "")[:1000],
    )
    return RedirectResponse(f"/ui/sites/{site}", 303)


@router.post("/sites/{site}/shutdowns/{shutdown_id}/cancel")
def cancel(
    site: str, shutdown_id: ShutdownId, principal: PrincipalDep, services: ServicesDep, _form: FormDep
) -> Response:
    services.sites.cancel_shutdown(principal, site, shutdown_id, services.clock.now())
    return RedirectResponse(f"/ui/sites/{site}", 303)


@router.post("/sites/{site}/vos/{vo}")
def switch_vo(site: str, vo: str, principal: PrincipalDep, services: ServicesDep, form: FormDep) -> Response:
    enabled = form.get("enabled") == "1"
    services.sites.set_vo_enabled(principal, site, vo, enabled, form.get("reason", ""), services.clock.now())
    return RedirectResponse(f"/ui/sites/{site}", 303)

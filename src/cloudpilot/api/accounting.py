"""``/api/v1/accounting``: usage records of VMs and jobs, reports and the APEL export.

An admin sees every record, a site admin those of its site, a user those of its VO; pilots see none.
Windows select the records that *ended* in ``[since, until)``; ``since``/``until`` are UNIX seconds or ISO 8601
(a time without a zone is UTC).
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError

from cloudpilot.api.deps import PrincipalDep, ServicesDep
from cloudpilot.api.responses import json_response
from cloudpilot.domain.accounting import parse_group_by, parse_time
from cloudpilot.domain.auth import Principal, Role
from cloudpilot.services.auth import require
from cloudpilot.services.errors import Forbidden

router = APIRouter(prefix="/api/v1/accounting", tags=["accounting"])


def _bad_query(name: str, message: str) -> RequestValidationError:
    """The app answers it with 400 ``bad_request`` naming the parameter, like any bad query value."""
    return RequestValidationError([{"loc": ("query", name), "msg": message, "type": "value_error"}])


def _window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    bounds: dict[str, float | None] = {}
    for name, text in (("since", since), ("until", until)):
        try:
            bounds[name] = None if text is None or not text.strip() else parse_time(text)
        except ValueError as exc:
            raise _bad_query(name, str(exc)) from None
    low, high = bounds["since"], bounds["until"]
    if low is not None and high is not None and high <= low:
        raise _bad_query("until", "must be later than since")
    return low, high


def _scope(principal: Principal, site: str | None, vo: str | None) -> tuple[str | None, str | None]:
    """The (site, vo) filter the caller may use: its own site or VO, whatever it asked for."""
    require(principal, Role.SITE, Role.USER)
    if principal.is_admin:
        return site, vo
    if principal.role is Role.SITE:
        if principal.site is None or site not in (None, principal.site):
            raise Forbidden(f"a site admin token of {principal.site!r} sees only that site's accounting")
        return principal.site, vo
    if principal.vo is None or vo not in (None, principal.vo):
        raise Forbidden(f"a user token of VO {principal.vo!r} sees only that VO's accounting")
    return site, principal.vo


@router.get("/vms", summary="VM usage records that ended in the window, oldest end first")
def vm_records(
    principal: PrincipalDep,
    services: ServicesDep,
    since: str | None = None,
    until: str | None = None,
    site: str | None = None,
    vo: str | None = None,
    cloud: str | None = None,
) -> Response:
    site, vo = _scope(principal, site, vo)
    low, high = _window(since, until)
    records = services.accounting.records.vm_records(low, high, site=site, vo=vo, cloud=cloud)
    return json_response({"records": [asdict(r) for r in records]})


@router.get("/jobs", summary="Job usage records that ended in the window, oldest end first")
def job_records(
    principal: PrincipalDep,
    services: ServicesDep,
    since: str | None = None,
    until: str | None = None,
    site: str | None = None,
    vo: str | None = None,
    cloud: str | None = None,
) -> Response:
    site, vo = _scope(principal, site, vo)
    low, high = _window(since, until)
    records = services.accounting.records.job_records(low, high, site=site, vo=vo, cloud=cloud)
    return json_response({"records": [asdict(r) for r in records]})


@router.get("/report", summary="Totals grouped by vo, site and/or cloud, and core-hours per VO over time")
def report(
    principal: PrincipalDep,
    services: ServicesDep,
    by: str = "vo",
    since: str | None = None,
    until: str | None = None,
) -> Response:
    site, vo = _scope(principal, None, None)
    try:
        keys = parse_group_by(by)
    except ValueError as exc:
        raise _bad_query("by", str(exc)) from None
    low, high = _window(since, until)
    return json_response(services.accounting.report(keys, low, high, site=site, vo=vo).as_json())


@router.get("/apel", summary="APEL cloud usage records (message format v0.4) of the VMs that ended in the window")
def apel(
    principal: PrincipalDep,
    services: ServicesDep,
    since: str | None = None,
    until: str | None = None,
    site: str | None = None,
    vo: str | None = None,
) -> Response:
    site, vo = _scope(principal, site, vo)
    low, high = _window(since, until)
    text = services.accounting.apel(low, high, site=site, vo=vo)
    return Response(text, media_type="text/plain; charset=utf-8")

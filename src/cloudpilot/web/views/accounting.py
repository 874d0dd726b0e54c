"""Accounting: core-hours by VO, site and cloud over a chosen period, as a chart and a table, and the APEL
export as a download. Scoped like ``/api/v1/accounting``: a site admin sees their site, a user their VO."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request, Response

from cloudpilot.api.accounting import _scope as accounting_scope  # the REST API's own rule, not a copy of it
from cloudpilot.domain.accounting import parse_group_by, parse_time
from cloudpilot.services.errors import BadInput
from cloudpilot.web.render import render
from cloudpilot.web.routing import PrincipalDep, ServicesDep, WebRoute

router = APIRouter(route_class=WebRoute)  # errors as pages (web/routing.py)
DAY = 86400.0
GROUPINGS = ["vo", "site", "cloud", "vo,site", "vo,cloud", "site,cloud", "vo,site,cloud"]


def _period(since: str, until: str, now: float) -> tuple[float, float]:
    """``since``/``until`` as dates or times (ISO 8601, UTC); by default the last 7 days up to now."""
    try:
        low = parse_time(since) if since.strip() else now - 7 * DAY
        high = parse_time(until) if until.strip() else now
    except ValueError as exc:
        raise BadInput(f"period: {exc}", "since") from None
    if high <= low:
        raise BadInput("period: 'until' must be later than 'since'", "until")
    return low, high


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


@router.get("/accounting")
def accounting(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    since: str = Query("", max_length=40),
    until: str = Query("", max_length=40),
    by: str = Query("vo", max_length=40),
) -> Response:
    site, vo = accounting_scope(principal, None, None)
    try:
        keys = parse_group_by(by)
    except ValueError as exc:
        raise BadInput(f"by: {exc}", "by") from None
    low, high = _period(since, until, services.clock.now())
    report = services.accounting.report(keys, low, high, site=site, vo=vo)
    return render(
        request,
        "accounting.html",
        report=report,
        groupings=GROUPINGS,
        filters={"since": since or _day(low), "until": until or _day(high + DAY), "by": ",".join(keys)},
    )


@router.get("/accounting/apel")
def apel(
    principal: PrincipalDep,
    services: ServicesDep,
    since: str = Query("", max_length=40),
    until: str = Query("", max_length=40),
) -> Response:
    site, vo = accounting_scope(principal, None, None)
    low, high = _period(since, until, services.clock.now())
    text = services.accounting.apel(low, high, site=site, vo=vo)
    disposition = f'attachment; filename="apel-{_day(low)}-{_day(high)}.txt"'
    return Response(text, media_type="text/plain; charset=utf-8", headers={"Content-Disposition": disposition})

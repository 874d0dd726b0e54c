"""``GET /pilot.pyz``: the pilot as one zipapp, which a VM's user-data downloads, checks and runs with ``python3``.

It holds only code (the pilot's token comes with the user-data), so it is served without a token. It is built
once per process, reproducibly, in :mod:`cloudpilot.context.pilot_zipapp`; its ETag is its sha256, the digest
the user-data pins.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from cloudpilot.context.pilot_zipapp import pilot_zipapp

router = APIRouter(tags=["pilots"])

MEDIA_TYPE = "application/zip"


@router.get(
    "/pilot.pyz",
    summary="The pilot zipapp (no token needed: it holds no secret)",
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: {}}}, 304: {"description": "unchanged (If-None-Match)"}},
)
def get_pilot_zipapp(request: Request) -> Response:
    app = pilot_zipapp()
    headers = {"ETag": app.etag, "Cache-Control": "no-cache"}  # no-cache: revalidate, a new server may differ
    wanted = _etags(request.headers.get("if-none-match", ""))
    if app.etag in wanted or "*" in wanted:
        return Response(status_code=304, headers=headers)
    return Response(
        app.content,
        media_type=MEDIA_TYPE,
        headers={**headers, "Content-Disposition": 'attachment; filename="pilot.pyz"'},
    )


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compared as strong: the content is the same)."""
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}

"""Receiving a sandbox: stream it to storage, stop at the limit, and keep nothing of a refused upload."""

from __future__ import annotations

from fastapi import Request

from cloudpilot.domain.auth import Principal
from cloudpilot.services.container import Services
from cloudpilot.storage.base import TooLarge


async def receive_sandbox(request: Request, services: Services, principal: Principal) -> tuple[str, int]:
    store = services.sandbox_store
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > store.max_bytes:
        raise TooLarge(store.max_bytes)
    writer = store.writer()
    try:
        async for chunk in request.stream():
            writer.write(chunk)
        sandbox_id, size = writer.commit()
    finally:
        writer.discard()
    services.sandbox_records.record(sandbox_id, size, principal.token_id, services.clock.now())
    return sandbox_id, size

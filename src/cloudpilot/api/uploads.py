"""Receiving a sandbox: stream it to storage, stop at the limit, and keep nothing of a refused upload."""

from __future__ import annotations

import base64

import anyio
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from cloudpilot.domain.auth import Principal
from cloudpilot.services.container import Services
from cloudpilot.services.errors import BadInput
from cloudpilot.storage.base import TooLarge, sandbox_id_of
from cloudpilot.store.sandboxes import StoredSandbox

# The body arrives in pieces of ~64 KiB; they go to storage in batches of this size from a worker thread, since
# a write may block (a disk, or an S3 part upload) and must not stall the event loop, and one thread hop per
# piece would cost more than the write.
BATCH_BYTES = 1 << 20
# A final report may carry an output sandbox up to this size inline, base64-encoded (docs/rest-api.md): most
# short jobs leave a few hundred bytes of job.log, and a PUT of its own would cost a round trip and a write.
INLINE_OUTPUT_BYTES = 64 * 1024
INLINE_OUTPUT_CHARS = 4 * ((INLINE_OUTPUT_BYTES + 2) // 3)


async def receive_sandbox(request: Request, services: Services, principal: Principal) -> tuple[str, int]:
    store = services.sandbox_store
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > store.max_bytes:
        raise TooLarge(store.max_bytes)
    writer = store.writer()
    try:
        batch = bytearray()
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > store.max_bytes:  # refused as the bytes arrive, not after a whole batch
                raise TooLarge(store.max_bytes)
            batch += chunk
            if len(batch) >= BATCH_BYTES:
                await run_in_threadpool(writer.write, bytes(batch))
                batch.clear()
        if batch:
            await run_in_threadpool(writer.write, bytes(batch))
        sandbox_id, size = await run_in_threadpool(writer.commit)
    finally:
        # Shielded: starlette cancels the request's scope when the client goes, and every await in a cancelled
        # scope would be cancelled again; what a cut-off upload left must still go.
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(writer.discard)
    services.sandbox_records.record(sandbox_id, size, principal.token_id, services.clock.now())
    return sandbox_id, size


def store_inline_output(encoded: str, services: Services, principal: Principal) -> StoredSandbox:
    """The output sandbox a report carries inline (base64), to be recorded with its bytes by the report, in its
    own transaction: a short job's output costs no file (or S3 object) of its own, which on a VM's disk costs
    more than the rest of the report."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError as exc:  # binascii.Error, and non-ASCII text, which b64decode refuses with a plain ValueError
        raise BadInput(f"output is not base64: {exc}", "output") from None
    if len(raw) > services.sandbox_store.max_bytes:
        raise TooLarge(services.sandbox_store.max_bytes)
    return StoredSandbox(sandbox_id_of(raw), len(raw), principal.token_id, content=raw)

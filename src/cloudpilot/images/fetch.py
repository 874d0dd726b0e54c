"""Fetching image lists, their signatures and image files over HTTP(S), with size limits."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import httpx

from cloudpilot.domain.images import ListedImage
from cloudpilot.images.errors import FetchFailed
from cloudpilot.images.trust import CHUNK, check_image, mismatch

MAX_LIST_BYTES = 16 << 20
USER_AGENT = "cloudpilot-images/1"


def signature_url(list_url: str) -> str:
    """Where a list's detached signature is by default: next to it, with ``.sig`` appended."""
    return list_url + ".sig"


def fetch_bytes(
    url: str, timeout: float = 30.0, max_bytes: int = MAX_LIST_BYTES, missing_ok: bool = False
) -> bytes | None:
    """The body of ``url``; ``None`` for a 404 when ``missing_ok``. Raises :class:`FetchFailed`."""
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True, headers={"User-Agent": USER_AGENT}) as r:
            if r.status_code == 404 and missing_ok:
                return None
            if r.status_code != 200:
                raise FetchFailed(f"GET {url} answered HTTP {r.status_code}")
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise FetchFailed(f"GET {url}: more than {max_bytes} bytes")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise FetchFailed(f"cannot fetch {url}: {exc}") from exc


def fetch_image(image: ListedImage, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``image`` to ``dest`` and check its size and sha512 while it arrives; the file appears at
    ``dest`` only when it matches. Raises :class:`ImageListRefused` (``image does not match``) or
    :class:`FetchFailed`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha512()
    size = 0
    try:
        with (
            httpx.stream(
                "GET", image.uri, timeout=timeout, follow_redirects=True, headers={"User-Agent": USER_AGENT}
            ) as r,
            part.open("wb") as out,
        ):
            if r.status_code != 200:
                raise FetchFailed(f"GET {image.uri} answered HTTP {r.status_code}")
            for chunk in r.iter_bytes(CHUNK):
                size += len(chunk)
                if size > image.size:
                    raise mismatch(image, f"it is larger than hv:size {image.size} bytes")
                digest.update(chunk)
                out.write(chunk)
        check_image(image, size, digest.hexdigest())
        os.replace(part, dest)
    except httpx.HTTPError as exc:
        raise FetchFailed(f"cannot fetch image {image.identifier} from {image.uri}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return dest

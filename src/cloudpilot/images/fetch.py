"""Fetching image lists, their signatures and image files over HTTP(S), with size limits and, for the server,
a :class:`FetchPolicy` that keeps those fetches from reaching what they should not (docs/images.md, "Fetching
safely"): https only unless allowed, no redirect to another host, no loopback, private, link-local or
multicast destination unless its host is allowed, one deadline per fetch, and errors that tell nothing about
the target's ports (a refused connection and a timeout read the same).

The address checked is the address connected to: the host is resolved once, and the request goes to that
address with the host name kept in the ``Host`` header and in TLS (SNI and certificate check), so a name that
resolves to a public address for the check cannot resolve to a private one for the connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloudpilot.domain.images import ListedImage
from cloudpilot.images.errors import FetchFailed, FetchRefused
from cloudpilot.images.trust import CHUNK, check_image, mismatch

MAX_LIST_BYTES = 16 << 20
MAX_REDIRECTS = 5
USER_AGENT = "cloudpilot-images/1"
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Where fetches may go. The default trusts its caller (the CLI fetching for its own user); the server
    passes :meth:`strict` built from ``images.*`` in its configuration."""

    allow_http: bool = True
    any_host: bool = True
    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def strict(cls, allow_http: bool = False, allowed_hosts: frozenset[str] = frozenset()) -> FetchPolicy:
        return cls(allow_http, False, frozenset(h.lower() for h in allowed_hosts))


TRUSTING = FetchPolicy()


def signature_url(list_url: str) -> str:
    """Where a list's detached signature is by default: next to it, with ``.sig`` appended."""
    return list_url + ".sig"


def fetch_bytes(
    url: str,
    timeout: float = 30.0,
    max_bytes: int = MAX_LIST_BYTES,
    missing_ok: bool = False,
    policy: FetchPolicy = TRUSTING,
) -> bytes | None:
    """The body of ``url``; ``None`` for a 404 when ``missing_ok``. Raises :class:`FetchFailed` (and its
    :class:`FetchRefused` when ``policy`` forbids the destination)."""
    deadline = time.monotonic() + timeout
    with _get(url, timeout, policy) as r:
        if r.status_code == 404 and missing_ok:
            return None
        if r.status_code != 200:
            raise FetchFailed(f"GET {url} answered HTTP {r.status_code}")
        data = bytearray()
        for chunk in _chunks(r, url, deadline):
            data += chunk
            if len(data) > max_bytes:
                raise FetchFailed(f"GET {url}: more than {max_bytes} bytes")
        return bytes(data)


def fetch_image(image: ListedImage, dest: Path, timeout: float = 60.0, policy: FetchPolicy = TRUSTING) -> Path:
    """Download ``image`` to ``dest`` and check its size and sha512 while it arrives; the file appears at
    ``dest`` only when it matches. ``timeout`` bounds each network wait, not the whole (large) download.
    Raises :class:`ImageListRefused` (``image does not match``) or :class:`FetchFailed`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha512()
    size = 0
    try:
        with _get(image.uri, timeout, policy) as r, part.open("wb") as out:
            if r.status_code != 200:
                raise FetchFailed(f"GET {image.uri} answered HTTP {r.status_code}")
            for chunk in _chunks(r, image.uri, None, CHUNK):
                size += len(chunk)
                if size > image.size:
                    raise mismatch(image, f"it is larger than hv:size {image.size} bytes")
                digest.update(chunk)
                out.write(chunk)
        check_image(image, size, digest.hexdigest())
        os.replace(part, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return dest


def _unreachable(url: str) -> FetchFailed:
    # One message whatever went wrong on the way (refused, reset, timed out, TLS): telling them apart would
    # let a caller map which ports of a host are open.
    return FetchFailed(f"cannot fetch {url}: no answer (connection failed or timed out)")


def _chunks(r: httpx.Response, url: str, deadline: float | None, size: int | None = None) -> Iterator[bytes]:
    try:
        for chunk in r.iter_bytes(size):
            if deadline is not None and time.monotonic() > deadline:
                raise _unreachable(url)
            yield chunk
    except httpx.HTTPError as exc:
        raise _unreachable(url) from exc


@contextlib.contextmanager
def _get(url: str, timeout: float, policy: FetchPolicy) -> Iterator[httpx.Response]:
    """GET ``url`` under ``policy``, following redirects on the same host only."""
    origin = httpx.URL(url)
    current = origin
    with httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            request = _pinned_request(client, current, policy)
            try:
                response = client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _unreachable(url) from exc
            if response.status_code not in REDIRECTS or "location" not in response.headers:
                try:
                    yield response
                finally:
                    response.close()
                return
            response.close()
            target = current.join(response.headers["location"])
            if target.host != origin.host:
                raise FetchRefused(f"GET {url} redirects to another host ({target.host}); not followed")
            current = target
    raise FetchFailed(f"GET {url}: more than {MAX_REDIRECTS} redirects")


def _pinned_request(client: httpx.Client, url: httpx.URL, policy: FetchPolicy) -> httpx.Request:
    """The request for ``url``, checked against ``policy`` and sent to the very address that was checked."""
    headers = {"User-Agent": USER_AGENT}
    if url.scheme not in ("https", "http") or (url.scheme == "http" and not policy.allow_http):
        allowed = "https:// URLs (images.allow_http: true allows http://)" if not policy.allow_http else "http(s)"
        raise FetchRefused(f"{url}: only {allowed} are fetched")
    if not url.host:
        raise FetchRefused(f"{url}: no host")
    if policy.any_host:
        return client.build_request("GET", url, headers=headers)
    address = _checked_address(url, policy)
    headers["Host"] = url.netloc.decode("ascii").rpartition("@")[2]
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return client.build_request("GET", url.copy_with(host=address), headers=headers, extensions=extensions)


def _checked_address(url: httpx.URL, policy: FetchPolicy) -> str:
    host = url.host.lower()
    try:
        infos = socket.getaddrinfo(host, url.port or (443 if url.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchFailed(f"cannot fetch {url}: its host {host} does not resolve") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if host not in policy.allowed_hosts:
        for address in addresses:
            if _internal(address):
                raise FetchRefused(
                    f"{url}: {host} resolves to a loopback, private, link-local or multicast address; "
                    "list it in images.allowed_hosts to fetch from it"
                )
    return str(addresses[0])


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return bool(
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
    )

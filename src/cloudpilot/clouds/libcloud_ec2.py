"""Libcloud's EC2 driver with every action sent as a POST: the user-data (and the VM token in it) stays out of URLs.

Libcloud sends EC2 query-API actions as GETs with every parameter in the query string, ``RunInstances``'
base64 ``UserData`` included, and URLs end up in access logs of proxies, load balancers and the cloud itself.
The EC2 query API takes the same parameters as an ``application/x-www-form-urlencoded`` POST body (what the AWS
SDKs send). Libcloud's SigV4 signer already signs a POST body (its sha256 is the payload hash) and leaves
``Version`` to the caller for POSTs, so this connection moves the parameters and ``Version`` into the body and
sends nothing in the query string. SigV2, which signs the query string of a GET only, cannot do this, so these
drivers use SigV4 (every AWS region accepts it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from libcloud.compute.drivers.ec2 import EC2Connection, EC2NodeDriver

FORM = "application/x-www-form-urlencoded; charset=utf-8"


class PostEC2Connection(EC2Connection):
    """An EC2 connection whose actions go as form-encoded POST bodies, signed with SigV4."""

    def request(  # type: ignore[override]
        self,
        action: str,
        params: dict[str, Any] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        **kwargs: Any,
    ) -> Any:
        if method != "GET" or data is not None:
            return super().request(action, params=params, data=data, headers=headers, method=method, **kwargs)
        form = urlencode(sorted({**(params or {}), "Version": self.version}.items()))
        headers = {**(headers or {}), "Content-Type": FORM}
        return super().request(action, params={}, data=form, headers=headers, method="POST", **kwargs)

    def add_default_params(self, params: dict[str, Any]) -> dict[str, Any]:
        params = super().add_default_params(params)
        if self.method == "POST":
            # A session token goes in the signed x-amz-security-token header (AWSTokenConnection sets it there
            # too); in the query string it would be one more credential in a URL.
            params.pop("x-amz-security-token", None)
        return params


class PostEC2NodeDriver(EC2NodeDriver):
    """Libcloud's EC2 driver over :class:`PostEC2Connection` (SigV4 by default; SigV2 is refused)."""

    connectionCls = PostEC2Connection

    def __init__(self, key: str, secret: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("signature_version", "4")
        if str(kwargs["signature_version"]) != "4":
            raise ValueError(
                f"signature_version {kwargs['signature_version']!r}: cloudpilot sends EC2 actions as POSTs, which "
                "only SigV4 signs (leave signature_version unset)"
            )
        super().__init__(key, secret, **kwargs)

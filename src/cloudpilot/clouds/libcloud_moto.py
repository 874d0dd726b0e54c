"""Let Libcloud's EC2 driver talk to moto's EC2 server (used only when a cloud sets ``ec2_moto_compat``).

Four differences between moto's server and AWS matter to Libcloud's EC2 driver:

* moto listens on plain HTTP on a local port: the driver is made with ``secure=False`` (``host``/``port`` come
  from the cloud's driver arguments);
* moto takes the region from the SigV4 ``Authorization`` header (a SigV2 request, Libcloud's default in
  us-east-1, lands in moto's default region whatever the driver's region): SigV4 is what
  :class:`~cloudpilot.clouds.libcloud_ec2.PostEC2NodeDriver`, the parent here, always uses;
* moto answers with the XML namespace ``http://ec2.amazonaws.com/doc/2016-11-15`` *without* the trailing slash
  that AWS sends, and Libcloud looks elements up with the exact namespace (``{ns}reservationSet``), so it would
  find nothing. The response class below rewrites moto's namespace to Libcloud's before parsing;
* moto puts that namespace on error documents too, where AWS puts none and Libcloud looks for ``Errors/Error``
  without one (it would report an empty message): the namespace is removed from error bodies.

Nothing here is used against a real cloud.
"""

from __future__ import annotations

from typing import Any

from libcloud.compute.drivers.ec2 import NAMESPACE, EC2Response

from cloudpilot.clouds.libcloud_ec2 import PostEC2Connection, PostEC2NodeDriver

# Libcloud's namespace is NAMESPACE (with the trailing slash); moto's is the same string without it.
_MOTO_XMLNS = f'xmlns="{NAMESPACE.rstrip("/")}"'
_LIBCLOUD_XMLNS = f'xmlns="{NAMESPACE}"'


class MotoEC2Response(EC2Response):
    """An EC2 response whose body gets the namespace Libcloud expects before it is parsed."""

    # Only the root element declares the namespace, so one exact replacement is enough in both methods.

    def parse_body(self) -> Any:
        if self.body and _MOTO_XMLNS in self.body:
            self.body = self.body.replace(_MOTO_XMLNS, _LIBCLOUD_XMLNS, 1)
        return super().parse_body()

    def parse_error(self) -> Any:
        if self.body and _MOTO_XMLNS in self.body:
            self.body = self.body.replace(" " + _MOTO_XMLNS, "", 1)
        return super().parse_error()


class MotoEC2Connection(PostEC2Connection):
    responseCls = MotoEC2Response


class MotoEC2NodeDriver(PostEC2NodeDriver):
    """Our EC2 driver (actions as POSTs, SigV4) with plain HTTP by default and moto's namespace tolerated."""

    connectionCls = MotoEC2Connection

    def __init__(self, key: str, secret: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("secure", False)
        super().__init__(key, secret, **kwargs)

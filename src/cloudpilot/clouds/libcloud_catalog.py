"""A service catalog that lacks the endpoint asked for is a configuration mistake, not an outage.

Libcloud's OpenStack drivers pick their endpoint from the Keystone token's service catalog by service type,
name and region (``ex_force_service_type``, ``ex_force_service_name``, ``ex_force_service_region``). When none
matches they raise a bare ``LibcloudError("Could not find specified endpoint")``, which reads like a transient
failure. :func:`endpoint_error` turns it into a :class:`CloudConfigError` that says what was asked for and what
the catalog offers, so the operator can fix the configuration without reading Libcloud's source.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from libcloud.common.types import LibcloudError

from cloudpilot.clouds.errors import CloudConfigError

_NOT_FOUND = "Could not find specified endpoint"
_MORE_THAN_ONE = "Found more than 1 matching endpoint"


def endpoint_error(exc: Exception, connection: Any, cloud: str, action: str) -> CloudConfigError | None:
    """The configuration error for a catalog lookup that failed, or None if ``exc`` is something else."""
    if isinstance(exc, LibcloudError) and _NOT_FOUND in str(exc.value):
        problem = "has no endpoint for"
    elif isinstance(exc, ValueError) and _MORE_THAN_ONE in str(exc):
        problem = "has more than one endpoint for"
    else:
        return None
    catalog = getattr(connection, "service_catalog", None)
    wanted = _wanted(connection)
    offered = _offered(catalog) if catalog is not None else "nothing (no catalog was received)"
    return CloudConfigError(
        cloud,
        f"{action}: the service catalog {problem} {wanted}; it offers {offered}. Set "
        "driver_kwargs ex_force_service_region (and ex_force_service_name / ex_force_service_type) to one of these",
    )


def _wanted(connection: Any) -> str:
    # Our forced values (driver_kwargs) win over the connection class's defaults, as in Libcloud's get_endpoint.
    fields = []
    for label, key in (("service type", "service_type"), ("name", "service_name"), ("region", "service_region")):
        value = getattr(connection, f"_ex_force_{key}", None) or getattr(connection, key, None)
        if value:
            fields.append(f"{label} {value!r}")
    return ", ".join(fields) or "the driver's service"


def _offered(catalog: Any) -> str:
    """``compute 'nova' in RegionOne, RegionTwo; identity 'keystone' in RegionOne`` (public endpoints)."""
    regions: dict[tuple[str, str], set[str]] = defaultdict(set)
    for entry in catalog.get_entries():
        key = (str(entry.service_type), str(entry.service_name or ""))
        regions[key].update(str(e.region) for e in entry.endpoints if e.region)
    if not regions:
        return "no service at all"
    parts = []
    for (service_type, name), where in sorted(regions.items()):
        named = f"{service_type} {name!r}" if name else service_type
        parts.append(f"{named} in {', '.join(sorted(where)) or 'no region'}")
    return "; ".join(parts)

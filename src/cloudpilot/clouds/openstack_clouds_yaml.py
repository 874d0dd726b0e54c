"""An OpenStack cloud from ``clouds.yaml`` (the os-client-config format the ``openstack`` CLI reads) by name.

    clouds:
      cern:
        auth:
          auth_url: https://keystone.cern.ch/v3
          username: svc-pilots              # Keystone v3 password …
          password: …
          project_name: physics
          user_domain_name: Default
          project_domain_id: default
          # … or an application credential (auth_type: v3applicationcredential):
          # application_credential_id: …
          # application_credential_secret: …
        region_name: RegionOne
        interface: public

It is looked for where the OpenStack tools look: ``$OS_CLIENT_CONFIG_FILE``, ``./clouds.yaml``,
``~/.config/openstack/clouds.yaml``, ``/etc/openstack/clouds.yaml``, unless the cloud names a file. The entry
becomes Libcloud OpenStack driver arguments. What Libcloud cannot honour is refused with a message instead of
being ignored: it scopes a project by its name and its domain's *id*, names a user's domain by *name*, and
always uses the catalog's public endpoints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cloudpilot.clouds.errors import CloudConfigError

SEARCH_ENV = "OS_CLIENT_CONFIG_FILE"
SEARCH_PATH = ("clouds.yaml", "~/.config/openstack/clouds.yaml", "/etc/openstack/clouds.yaml")
APP_CREDENTIAL = "v3applicationcredential"


def find_clouds_yaml(environ: Mapping[str, str] | None = None) -> Path | None:
    """The first clouds.yaml of the standard places that exists (relative paths from the working directory)."""
    env = os.environ if environ is None else environ
    candidates = [env[SEARCH_ENV]] if env.get(SEARCH_ENV) else []
    for candidate in (*candidates, *SEARCH_PATH):
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
    return None


def libcloud_openstack_args(cloud: str, entry: str, path: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(driver_args, driver_kwargs)`` for Libcloud's OpenStack driver from entry ``entry`` of ``path``
    (default: :func:`find_clouds_yaml`); :class:`CloudConfigError` naming the file and key when it cannot be."""
    path = path or find_clouds_yaml()
    if path is None:
        places = ", ".join((f"${SEARCH_ENV}", *SEARCH_PATH))
        raise CloudConfigError(cloud, f"openstack_cloud {entry!r}: no clouds.yaml in {places}; set clouds_yaml")
    settings = _entry(cloud, entry, path)
    where = f"{path}: clouds.{entry}"
    auth = settings.get("auth")
    if not isinstance(auth, Mapping):
        raise CloudConfigError(cloud, f"{where}.auth: missing (auth_url and credentials)")
    kwargs: dict[str, Any] = {"ex_force_auth_url": _auth_base(_text(cloud, where, auth, "auth_url"))}
    if settings.get("auth_type") == APP_CREDENTIAL or "application_credential_id" in auth:
        args = {
            "key": _text(cloud, where, auth, "application_credential_id"),
            "secret": _text(cloud, where, auth, "application_credential_secret"),
        }
        kwargs["ex_force_auth_version"] = "3.x_appcred"  # the credential carries its project
    else:
        args = {"key": _text(cloud, where, auth, "username"), "secret": _text(cloud, where, auth, "password")}
        kwargs.update(ex_force_auth_version="3.x_password", ex_tenant_name=_text(cloud, where, auth, "project_name"))
        kwargs.update(_domains(cloud, where, auth))
    if settings.get("region_name"):
        kwargs["ex_force_service_region"] = str(settings["region_name"])
    interface = settings.get("interface", "public")
    if interface not in ("public", "external"):
        raise CloudConfigError(cloud, f"{where}.interface: {interface!r}: Libcloud uses the public endpoints only")
    return args, kwargs


def _entry(cloud: str, entry: str, path: Path) -> Mapping[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CloudConfigError(cloud, f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise CloudConfigError(cloud, f"{path} is not valid YAML") from None  # its text may hold a password
    clouds = document.get("clouds") if isinstance(document, Mapping) else None
    if not isinstance(clouds, Mapping) or not isinstance(clouds.get(entry), Mapping):
        known = sorted(clouds) if isinstance(clouds, Mapping) else []
        raise CloudConfigError(cloud, f"{path} has no cloud {entry!r} under clouds: (it has {known})")
    return clouds[entry]


def _text(cloud: str, where: str, auth: Mapping[str, Any], key: str) -> str:
    value = auth.get(key)
    if not isinstance(value, str | int) or not str(value).strip():
        raise CloudConfigError(cloud, f"{where}.auth.{key}: missing")
    return str(value).strip()


def _auth_base(url: str) -> str:
    """Keystone's base URL: Libcloud appends ``/v3/auth/tokens`` itself, clouds.yaml often ends in ``/v3``."""
    url = url.rstrip("/")
    return url.removesuffix("/v3")


def _domains(cloud: str, where: str, auth: Mapping[str, Any]) -> dict[str, str]:
    """The user's domain (by name) and the project's (by id), as Libcloud takes them."""
    kwargs: dict[str, str] = {}
    user_domain = auth.get("user_domain_name")
    if user_domain is None and auth.get("user_domain_id") is not None:
        if str(auth["user_domain_id"]) != "default":
            raise CloudConfigError(cloud, f"{where}.auth.user_domain_id: Libcloud takes it by name: user_domain_name")
        user_domain = "Default"  # the one domain whose id and name every Keystone knows
    if user_domain is not None:
        kwargs["ex_domain_name"] = str(user_domain)
    project_domain = auth.get("project_domain_id")
    if project_domain is None and auth.get("project_domain_name") is not None:
        if str(auth["project_domain_name"]) != "Default":
            raise CloudConfigError(
                cloud, f"{where}.auth.project_domain_name: Libcloud takes it by id: project_domain_id"
            )
        project_domain = "default"
    if project_domain is not None:
        kwargs["ex_tenant_domain_id"] = str(project_domain)
    return kwargs

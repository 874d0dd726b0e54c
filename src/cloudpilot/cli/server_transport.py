"""What ``cloudpilot server`` checks about its transport before it starts: TLS files, and the URL VMs get."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from cloudpilot.config import ServerConfig

CertFile = typer.Option(None, "--tls-cert", help="Serve HTTPS with this PEM certificate (chain).")
KeyFile = typer.Option(None, "--tls-key", help="The private key of --tls-cert (PEM).")


def tls_options_or_exit(cert: Path | None, key: Path | None) -> dict[str, str]:
    """uvicorn's ``ssl_certfile``/``ssl_keyfile`` for --tls-cert/--tls-key (``{}``: plain HTTP), checked now so
    that a wrong file is one line naming it, not a traceback once the loops have started."""
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        typer.echo("error: --tls-cert and --tls-key go together", err=True)
        raise typer.Exit(2)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        typer.echo(f"error: cannot serve TLS with --tls-cert {cert} and --tls-key {key}: {reason}", err=True)
        raise typer.Exit(2) from exc
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def exit_if_vms_cannot_reach(config: ServerConfig, public_url: str) -> None:
    """Stop (exit 2) when VMs of a non-local cloud would be told a loopback URL: they would boot and never
    reach this server (config/reachability.py)."""
    from cloudpilot.config.reachability import unreachable_server_url

    problem = unreachable_server_url(config, public_url)
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)

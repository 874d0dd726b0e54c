"""``cloudpilot token create|list|revoke``: ``create`` writes to a data directory's store (it is how the first
admin token comes to be); ``list`` and ``revoke`` go through the REST API with an admin token."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudpilot.cli.common import JsonOption, TokenOption, UrlOption, connect, emitted_json, fail, short_when, text
from cloudpilot.cli.server import ConfigFile, DataDir, load_config_or_exit
from cloudpilot.domain.auth import Role

app = typer.Typer(help="Manage tokens.", no_args_is_help=True)


@app.command("create")
def token_create(
    data_dir: Path = DataDir,
    role: Role = typer.Option(..., "--role", help="admin, user, pilot or site."),
    vo: str | None = typer.Option(None, "--vo", help="The VO of a user or pilot token."),
    site: str | None = typer.Option(None, "--site", help="The site of a site token."),
    name: str | None = typer.Option(None, "--name", help="Who holds it; a user token's name owns its jobs."),
    init: bool = typer.Option(False, "--init", help="Create the database if the data directory holds none yet."),
    config: Path | None = ConfigFile,
) -> None:
    """Create a token in the store and print only the token."""
    # The store is imported here: SQLAlchemy is not needed by any other command of this module.
    from cloudpilot.services.errors import BadInput
    from cloudpilot.services.tokens import issue_token
    from cloudpilot.store.database import Database
    from cloudpilot.store.migrations import current_version, upgrade
    from cloudpilot.store.tokens import TokenRepository

    cfg = load_config_or_exit(config)
    url = cfg.database_url_for(data_dir)
    # A mistyped --data-dir must not quietly get a new, empty database whose tokens the server never sees.
    no_database = f"{data_dir} holds no cloudpilot database: check --data-dir, or pass --init to create one"
    if not init and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        fail(no_database, 2)
    db = Database(url)
    try:
        if not init and current_version(db) == 0:
            fail(no_database if cfg.database_url is None else "the configured database_url holds no cloudpilot "
                 "schema: check it, or pass --init to create the schema", 2)  # fmt: skip
        upgrade(db)
        issued = issue_token(
            TokenRepository(db), role, name or f"{role.value}-{vo or site or 'any'}", time.time(), vo=vo, site=site
        )
    except BadInput as exc:
        fail(str(exc), 2)
    finally:
        db.dispose()
    typer.echo(issued.token)


@app.command("list")
def token_list(
    role: Role | None = typer.Option(None, "--role", help="Only tokens of this role."),
    include_inactive: bool = typer.Option(False, "--all", help="Also revoked and expired tokens."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """List tokens (admin token), oldest first: who holds them and their scope, never their secrets."""
    with connect(url, token) as client:
        found = client.tokens(role, include_inactive)
    if emitted_json(found, as_json):
        return
    table = Table(title=f"{len(found)} tokens")
    table.add_column("id", no_wrap=True)  # whole: it is what `token revoke` takes
    for column in ("role", "name", "vo", "site", "vm", "created", "expires", "revoked"):
        table.add_column(column)
    for t in found:
        table.add_row(
            t["id"],
            t["role"],
            escape(t["name"]),
            escape(text(t["vo"])),
            escape(text(t["site"])),
            text(t["vm_id"]),
            short_when(t["created_at"]),
            short_when(t["expires_at"]),
            short_when(t["revoked_at"]),
        )
    Console().print(table)


@app.command("revoke")
def token_revoke(
    token_ids: list[str] = typer.Argument(..., metavar="ID...", help="Token ids (the ID in cp_ID_SECRET)."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Revoke tokens (admin token): the server refuses them from now on."""
    with connect(url, token) as client:
        for given in token_ids:
            parts = given.split("_")  # a whole token pasted: its id is the middle part
            token_id = parts[1] if len(parts) >= 3 and parts[0] == "cp" else given
            client.revoke_token(token_id)
            typer.echo(f"token {token_id} revoked")

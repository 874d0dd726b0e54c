"""``cloudpilot image …``: an endorser's tools (keygen, sign, verify, offline) and a site's (subscribe, list,
revoke, … through the server). docs/images.md says what is signed and what verification refuses."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudpilot.cli.common import JsonOption, TokenOption, UrlOption, connect, emitted_json, fail, when
from cloudpilot.domain.images import ImageListInvalid, iso, parse_document, parse_image_list
from cloudpilot.images.errors import FetchFailed, ImageListRefused, KeyFileError

# cloudpilot.images.signing/trust/fetch load cryptography (~0.1 s): imported by the commands that sign or verify,
# so that every other command starts fast.

app = typer.Typer(help="Image lists: sign and verify them (endorsers), subscribe and revoke (sites).")

STATE_STYLES = {"endorsed": "green", "expired": "yellow", "revoked": "red", "unendorsed": "dim", "rejected": "red"}


# --- endorsers (offline) ----------------------------------------------------------------------------------------


@app.command("keygen")
def keygen(
    out: Path = typer.Option(Path("endorser"), "--out", metavar="PREFIX", help="Writes PREFIX.key and PREFIX.pub."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Make an Ed25519 key pair for signing image lists; print the public key's fingerprint."""
    from cloudpilot.images.signing import write_keypair

    try:
        key_path, pub_path, fp = write_keypair(out, force)
    except KeyFileError as exc:
        fail(str(exc))
    typer.echo(f"private key: {key_path} (keep it secret)\npublic key:  {pub_path}\nfingerprint: {fp}")


@app.command("sign")
def sign(
    image_list: Path = typer.Argument(..., metavar="LIST.json", help="The image list (HEPiX JSON)."),
    key: Path = typer.Option(..., "--key", metavar="FILE", help="The endorser's private key (PEM)."),
    output: Path | None = typer.Option(None, "--output", "-o", metavar="FILE", help="Default: LIST.json.sig."),
) -> None:
    """Write the detached signature of an image list (its canonical JSON, see docs/images.md)."""
    from cloudpilot.images.signing import load_private_key, sign_document

    try:
        doc = parse_document(image_list.read_bytes())
        parsed = parse_image_list(doc)
        private = load_private_key(key)
    except OSError as exc:
        fail(f"cannot read {image_list}: {exc.strerror}")
    except (ImageListInvalid, KeyFileError) as exc:
        fail(f"{image_list}: {exc}" if isinstance(exc, ImageListInvalid) else str(exc))
    if parsed.expires_at <= time.time():
        typer.echo(f"warning: the list expired at {iso(parsed.expires_at)}; verifiers will refuse it", err=True)
    target = output or Path(f"{image_list}.sig")
    target.write_bytes(sign_document(doc, private))
    typer.echo(f"signed list {parsed.identifier} version {parsed.version} ({len(parsed.images)} images): {target}")


@app.command("verify")
def verify(
    image_list: str = typer.Argument(..., metavar="LIST.json", help="The list: a file or an http(s) URL."),
    endorser: list[str] = typer.Option(
        ..., "--endorser", metavar="KEY", help="A trusted public key (file, PEM or raw base64); repeatable."
    ),
    signature: str | None = typer.Option(None, "--signature", metavar="FILE|URL", help="Default: LIST.json.sig."),
    endorser_name: str | None = typer.Option(None, "--endorser-name", help="The hv:endorser DN required."),
    held_version: str | None = typer.Option(None, "--held-version", help="Refuse a hv:version lower than this."),
    fetch: bool = typer.Option(False, "--fetch", help="Fetch every image and check its hv:size and sha512."),
    download_dir: Path | None = typer.Option(None, "--download-dir", help="Keep fetched images here."),
) -> None:
    """Verify an image list as a server would: signature, trusted endorser, expiry, version, and with --fetch
    every image's size and sha512. Exit 1 with the reason when refused."""
    from cloudpilot.images.fetch import fetch_image
    from cloudpilot.images.signing import load_public_key
    from cloudpilot.images.trust import trusted_keys, verify_image_file, verify_list

    try:
        keys = trusted_keys(load_public_key(k) for k in endorser)
    except KeyFileError as exc:
        fail(f"--endorser: {exc}", 2)
    data = _read(image_list)
    sig = _read(signature or f"{image_list}.sig", missing_ok=True)
    assert data is not None
    try:
        verified = verify_list(data, sig, keys, time.time(), endorser_name=endorser_name, held_version=held_version)
    except ImageListRefused as exc:
        fail(str(exc))
    lst = verified.image_list
    if fetch:
        with tempfile.TemporaryDirectory(prefix="cloudpilot-images-") as tmp:
            where = download_dir or Path(tmp)
            for image in lst.images:
                try:
                    path = fetch_image(image, where / f"{image.sha512[:32]}.{image.format}")
                    verify_image_file(image, path)
                except ImageListRefused as exc:
                    fail(str(exc))
                except FetchFailed as exc:
                    fail(f"image {image.identifier}: {exc}")
                typer.echo(f"image {image.identifier}: {image.size} bytes, sha512 matches")
    typer.echo(
        f"verified: list {lst.identifier} version {lst.version} by {lst.endorser} (key {verified.endorser_key}), "
        f"{len(lst.images)} images, expires {iso(lst.expires_at)}"
    )


def _read(source: str, missing_ok: bool = False) -> bytes | None:
    from cloudpilot.images.fetch import fetch_bytes

    if source.startswith(("http://", "https://")):
        try:
            return fetch_bytes(source, missing_ok=missing_ok)
        except FetchFailed as exc:
            fail(str(exc))
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        fail(f"{source} does not exist")
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}")


# --- sites (through the server) ---------------------------------------------------------------------------------


@app.command("subscribe")
def subscribe(
    list_url: str = typer.Argument(..., metavar="URL", help="Where the endorser publishes the list."),
    endorser: str = typer.Option(..., "--endorser", metavar="KEY", help="The endorser's public key you trust."),
    signature_url: str | None = typer.Option(None, "--signature-url", help="Default: URL + '.sig'."),
    endorser_name: str | None = typer.Option(None, "--endorser-name", help="The hv:endorser DN the list must name."),
    refresh: float | None = typer.Option(None, "--refresh-seconds", help="How often the server fetches it again."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Subscribe the server to an endorser's image list (admin or site token); refused lists say why."""
    from cloudpilot.images.signing import load_public_key, public_key_pem

    try:
        key = public_key_pem(load_public_key(endorser))
    except KeyFileError as exc:
        fail(f"--endorser: {exc}", 2)
    with connect(url, token) as client:
        sub = client.subscribe_images(list_url, key, signature_url, endorser_name, refresh)
    if emitted_json(sub, as_json):
        return
    typer.echo(
        f"subscription {sub['id']}: list {sub['list_identifier']} version {sub['version']} "
        f"(key {sub['endorser_fingerprint']}), expires {iso(sub['expires_at'])}"
    )


@app.command("subscriptions")
def subscriptions(as_json: bool = JsonOption, url: str | None = UrlOption, token: str | None = TokenOption) -> None:
    """The lists the server subscribes to, with the version held and the last refusal, if any."""
    with connect(url, token) as client:
        found = client.image_subscriptions()
    if emitted_json(found, as_json):
        return
    table = Table("id", "list", "version", "expires", "endorser key", "url", "last error", title="subscriptions")
    for s in found:
        table.add_row(
            str(s["id"]),
            escape(str(s["list_identifier"])),
            escape(str(s["version"])),
            when(s["expires_at"]),
            escape(s["endorser_fingerprint"]),
            escape(s["url"]),
            escape(s["last_error"] or ""),
        )
    Console().print(table)


@app.command("refresh")
def refresh(
    subscription: int = typer.Argument(..., metavar="ID"),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Fetch a subscribed list again now."""
    with connect(url, token) as client:
        sub = client.refresh_images(subscription)
    what = "new version held" if sub["changed"] else "unchanged"
    typer.echo(f"subscription {sub['id']}: list {sub['list_identifier']} version {sub['version']} ({what})")


@app.command("unsubscribe")
def unsubscribe(
    subscription: int = typer.Argument(..., metavar="ID"),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Forget a subscription: its images are no longer endorsed here (running VMs go on)."""
    with connect(url, token) as client:
        sub = client.unsubscribe_images(subscription)
    typer.echo(f"unsubscribed from {sub['url']}")


@app.command("list")
def list_images(as_json: bool = JsonOption, url: str | None = UrlOption, token: str | None = TokenOption) -> None:
    """Images held, revoked or mapped by a cloud: state (endorsed, expired, revoked, unendorsed, rejected), why,
    and where they may boot."""
    with connect(url, token) as client:
        found = client.images()
    if emitted_json(found, as_json):
        return
    Console().print(images_table(found["images"], found["enforced"]))


def images_table(images: list[dict[str, Any]], enforced: bool) -> Table:
    rule = "only endorsed images boot" if enforced else "no image list in force"
    table = Table("image", "state", "why", "tags", "clouds", title=f"{len(images)} images ({rule})")
    for image in images:
        style = STATE_STYLES.get(image["state"], "")
        clouds = ", ".join(
            f"{escape(name)}{'' if c['bootable'] else ' (refused)'}" for name, c in image["clouds"].items()
        )
        table.add_row(
            escape(image["identifier"]),
            f"[{style}]{image['state']}[/{style}]" if style else image["state"],
            escape(image["why"]),
            escape(", ".join(image["tags"])),
            clouds,
        )
    return table


@app.command("revoke")
def revoke(
    identifier: str = typer.Argument(..., metavar="IMAGE"),
    reason: str = typer.Option("", "--reason", help="Why (shown with the image and on its VMs)."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Revoke an image: it never boots again here, and its running VMs drain (their jobs finish)."""
    with connect(url, token) as client:
        found = client.revoke_image(identifier, reason)
    drained = found.get("drained", [])
    typer.echo(
        f"image {identifier} revoked; {len(drained)} VM(s) draining" + (f": {', '.join(drained)}" if drained else "")
    )


@app.command("reinstate")
def reinstate(
    identifier: str = typer.Argument(..., metavar="IMAGE"),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Lift a revocation."""
    with connect(url, token) as client:
        found = client.reinstate_image(identifier)
    typer.echo(f"image {identifier}: {found['state']} ({found['why']})")

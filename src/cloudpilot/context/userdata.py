"""The user-data a VM boots with: a ``#cloud-config`` that writes the pilot's configuration and starts it.

The pilot is downloaded from the server and run only if its sha256 is the one the user-data pins; a CA that
signed the server's certificate goes along when one is configured (``provisioner.ca_file``), for the download
and for the pilot.

Only ``write_files``, ``runcmd`` and ``power_state`` are used, because the ``local`` cloud driver boots its
"VMs" from the same user-data by applying exactly that subset. Its "VMs" are directories, so every path the
commands use goes through ``${CLOUDPILOT_VM_ROOT:-}``: the local driver sets it to the VM's root directory,
on a real VM it is unset and the paths are the absolute ones written by ``write_files``.

When a site or VO adds parts of its own, the user-data is a MIME multipart document with ours first.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import yaml

from cloudpilot.context.errors import InvalidContext, UserDataTooLarge
from cloudpilot.context.pilot_zipapp import pilot_zipapp

# Clouds refuse larger user-data (EC2: 16 KB before base64), so every cloud gets at most this much.
MAX_USER_DATA_BYTES = 16384

VM_ROOT_VAR = "CLOUDPILOT_VM_ROOT"
CONFIG_FILE = "/etc/cloudpilot/pilot.json"
TOKEN_FILE = "/etc/cloudpilot/pilot.token"
ENV_FILE = "/etc/cloudpilot/env"
CA_FILE = "/etc/cloudpilot/ca.pem"  # the CA of the server's certificate, when the configuration names one
PILOT_ZIPAPP = "/opt/cloudpilot/pilot.pyz"
PILOT_WORKDIR = "/var/lib/cloudpilot"
PAYLOAD_USER = "cloudpilot-payload"  # created at boot; the pilot (root) runs payloads as this user
PAYLOAD_USER_VAR = "CLOUDPILOT_PAYLOAD_USER"  # the local cloud sets it (to nobody): its VMs share the host's users
PILOT_ZIPAPP_ROUTE = "/pilot.pyz"  # on the server, relative to its base URL
FETCH_ATTEMPTS = 10  # the server may not be reachable yet when the VM's network comes up

# How cloud-init merges a site's or VO's cloud-config part into ours: lists appended and our keys kept.
# Its default would replace our ``runcmd`` and ``write_files`` by theirs, and the VM would never start a pilot.
EXTRA_CLOUD_CONFIG_MERGE = "dict(no_replace,recurse_list)+list(append)+str()"

# Downloads the pilot zipapp with the standard library (minimal images have python3 but not always curl),
# retrying with backoff, checks its sha256 against the pinned one and moves it into place only then: the runcmd
# runs the pilot only when this exits 0. An untrusted certificate or a wrong digest is final (no retry). It is
# passed to ``python3 -c`` inside single quotes, so it must not contain one.
_FETCH_SCRIPT = f"""import hashlib, os, ssl, sys, time, urllib.request
url, dest, pinned = sys.argv[1:4]
context = ssl.create_default_context(cafile=sys.argv[4] if len(sys.argv) > 4 else None)
for attempt in range(1, {FETCH_ATTEMPTS + 1}):
    try:
        with urllib.request.urlopen(url, timeout=60, context=context) as answer:
            data = answer.read()
        break
    except Exception as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLCertVerificationError):
            sys.exit("cloudpilot: %s: the TLS certificate of the server is not trusted: %s" % (url, reason))
        print("cloudpilot: cannot fetch %s (attempt %d): %s" % (url, attempt, exc), file=sys.stderr)
        if attempt == {FETCH_ATTEMPTS}:
            sys.exit(1)
        time.sleep(min(2 ** attempt, 30))
digest = hashlib.sha256(data).hexdigest()
if digest != pinned:
    sys.exit("cloudpilot: refusing to run %s: its sha256 is %s, the user-data pins %s" % (url, digest, pinned))
with open(dest + ".part", "wb") as out:
    out.write(data)
os.replace(dest + ".part", dest)"""

_TEXT_TYPE = re.compile(r"text/[a-z0-9][a-z0-9.+-]*")
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class PilotContext:
    """Everything one VM's pilot is told at boot. ``pilot_token`` is bound to this VM and VO.

    ``cores``/``memory_mb`` of ``None`` let the pilot detect them; ``lifetime_seconds`` of ``None`` means no
    limit. The MJF locations are URLs or absolute paths (paths are taken inside the VM's root).
    """

    server_url: str
    vm_id: str
    vo: str
    pilot_token: str = field(repr=False)  # kept out of repr() so a logged context does not leak it
    cores: int | None = None
    memory_mb: int | None = None
    site: str | None = None
    cloud: str | None = None
    tags: tuple[str, ...] = ()
    image: str | None = None  # the endorsed image the VM boots (docs/images.md): the pilot offers it
    lifetime_seconds: float | None = None
    idle_timeout_seconds: float = 600.0
    machinefeatures_url: str | None = None
    jobfeatures_url: str | None = None
    ca_pem: str | None = None  # PEM certificates the pilot trusts for the server (besides the system's)
    pilot_sha256: str | None = None  # the pilot.pyz the VM may run; None: the one this process serves

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))
        if self.pilot_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.pilot_sha256):
            raise InvalidContext("pilot_sha256", "must be a sha256 digest in lower-case hex")
        if self.ca_pem is not None and "-----BEGIN CERTIFICATE-----" not in self.ca_pem:
            raise InvalidContext("ca_pem", "must hold PEM certificates (-----BEGIN CERTIFICATE-----)")
        if not re.fullmatch(r"https?://[^\s'\"\\]+", self.server_url):
            raise InvalidContext("server_url", f"must be an http:// or https:// URL, not {self.server_url!r}")
        for name in ("vm_id", "vo"):
            if not _printable(getattr(self, name)):
                raise InvalidContext(name, "must be non-empty printable text")
        if not self.pilot_token or any(c.isspace() or not c.isprintable() for c in self.pilot_token):
            # The message must not quote the token.
            raise InvalidContext("pilot_token", "must be non-empty, without spaces or control characters")
        for name in ("cores", "memory_mb"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidContext(name, f"must be at least 1, not {value}")
        for name in ("site", "cloud", "image", "machinefeatures_url", "jobfeatures_url"):
            value = getattr(self, name)
            if value is not None and not _printable(value):
                raise InvalidContext(name, "must be non-empty printable text or None")
        for tag in self.tags:
            if not _printable(tag) or "," in tag or tag != tag.strip():
                raise InvalidContext("tags", f"{tag!r} is not a tag (no commas or surrounding spaces)")
        for name in ("lifetime_seconds", "idle_timeout_seconds"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InvalidContext(name, f"must be a non-negative number of seconds, not {value}")

    @property
    def pilot_zipapp_url(self) -> str:
        return self.server_url.rstrip("/") + PILOT_ZIPAPP_ROUTE


@dataclass(frozen=True, slots=True)
class UserDataPart:
    """A site's or VO's own part, e.g. ``text/x-shellscript`` or ``text/cloud-config``.

    Shell-script parts run in cloud-init's final stage before the pilot starts (see :func:`build_user_data`).
    """

    content_type: str
    content: str
    filename: str | None = None


def build_user_data(ctx: PilotContext, extra_parts: Sequence[UserDataPart] = ()) -> str:
    """The user-data for one VM: ``#cloud-config``, or MIME multipart with it first when there are extra parts.

    Raises :class:`UserDataTooLarge` above :data:`MAX_USER_DATA_BYTES`, :class:`InvalidContext` for a part
    that cannot go in.
    """
    return assemble_user_data(cloud_config_of(ctx), extra_parts)


def assemble_user_data(cloud_config: Mapping[str, Any], extra_parts: Sequence[UserDataPart] = ()) -> str:
    """User-data from any cloud-config mapping (a pilot's, a cluster agent's), with ``extra_parts`` after it
    (MIME multipart, their cloud-config merged by appending lists); :class:`UserDataTooLarge` above the limit."""
    text = "#cloud-config\n" + yaml.dump(
        dict(cloud_config), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096
    )
    user_data = _multipart(text, extra_parts) if extra_parts else text
    size = len(user_data.encode())
    if size > MAX_USER_DATA_BYTES:
        raise UserDataTooLarge(size, MAX_USER_DATA_BYTES)
    return user_data


def cloud_config_of(ctx: PilotContext) -> dict[str, Any]:
    """The cloud-config mapping (before YAML) for ``ctx``."""
    files = [
        {"path": CONFIG_FILE, "permissions": "0644", "content": json.dumps(_public_config(ctx), indent=2) + "\n"},
        {"path": TOKEN_FILE, "permissions": "0600", "content": ctx.pilot_token + "\n"},
    ]
    if ctx.ca_pem is not None:
        files.append({"path": CA_FILE, "permissions": "0644", "content": ctx.ca_pem.strip() + "\n"})
    env = _mjf_environment(ctx)
    if env:
        files.append({"path": ENV_FILE, "permissions": "0644", "content": env})
    return {
        "write_files": files,
        "runcmd": _runcmd(ctx, source_env=bool(env)),
        # cloud-init runs runcmd (its scripts_user module) before power_state in the final stage, so this
        # powers the VM off when the pilot exits, whatever its exit status: an idle VM only costs money.
        "power_state": {
            "mode": "poweroff",
            "delay": "now",
            "message": "cloudpilot: the pilot has exited; powering off",
            "condition": True,
        },
    }


def _public_config(ctx: PilotContext) -> dict[str, Any]:
    """The pilot's configuration as written to CONFIG_FILE: everything but the token, which has its own file."""
    return {
        "server_url": ctx.server_url,
        "vm_id": ctx.vm_id,
        "vo": ctx.vo,
        "token_file": TOKEN_FILE,
        "cores": ctx.cores,
        "memory_mb": ctx.memory_mb,
        "site": ctx.site,
        "cloud": ctx.cloud,
        "tags": list(ctx.tags),
        "image": ctx.image,
        "lifetime_seconds": ctx.lifetime_seconds,
        "idle_timeout_seconds": ctx.idle_timeout_seconds,
        "machinefeatures_url": ctx.machinefeatures_url,
        "jobfeatures_url": ctx.jobfeatures_url,
    }


def _mjf_environment(ctx: PilotContext) -> str:
    """ENV_FILE's content (sh syntax, sourced before the pilot starts); empty without MJF locations."""
    lines = []
    for name, value in (("MACHINEFEATURES", ctx.machinefeatures_url), ("JOBFEATURES", ctx.jobfeatures_url)):
        if value is None:
            continue
        # An absolute path lives in the VM's file system, which the local driver roots elsewhere.
        quoted = _in_vm(value) if value.startswith("/") else shlex.quote(value)
        lines.append(f"{name}={quoted}\n")
    return "".join(lines)


def pilot_command(ctx: PilotContext) -> str:
    """The shell command that runs the pilot (already in place at PILOT_ZIPAPP) until it exits; SSH
    contextualization (context/ssh_plan.py) runs the same command as the user-data."""
    return " ".join(_pilot_argv(ctx))


def _pilot_argv(ctx: PilotContext) -> list[str]:
    pilot = [
        "python3",
        _in_vm(PILOT_ZIPAPP),
        "--server",
        shlex.quote(ctx.server_url),
        "--token-file",
        _in_vm(TOKEN_FILE),
        "--delete-token-file",  # a one-time registration token: gone before any payload starts
        "--payload-user",
        f'"${{{PAYLOAD_USER_VAR}:-{PAYLOAD_USER}}}"',
        "--workdir",
        _in_vm(PILOT_WORKDIR),
    ]
    if ctx.ca_pem is not None:
        pilot += ["--ca-file", _in_vm(CA_FILE)]
    if ctx.cores is not None:
        pilot += ["--cores", str(ctx.cores)]
    if ctx.memory_mb is not None:
        pilot += ["--memory-mb", str(ctx.memory_mb)]
    if ctx.site is not None:
        pilot += ["--site", shlex.quote(ctx.site)]
    if ctx.cloud is not None:
        pilot += ["--cloud", shlex.quote(ctx.cloud)]
    if ctx.tags:
        pilot += ["--tags", shlex.quote(",".join(ctx.tags))]
    if ctx.image is not None:
        pilot += ["--image", shlex.quote(ctx.image)]
    if ctx.lifetime_seconds is not None:
        pilot += ["--lifetime", _number(ctx.lifetime_seconds)]
    pilot += ["--idle-timeout", _number(ctx.idle_timeout_seconds)]
    return pilot


def _runcmd(ctx: PilotContext, source_env: bool) -> list[str]:
    """Shell commands (run by sh, each on its own) that fetch the pilot and run it until it exits."""
    pilot = _pilot_argv(ctx)
    fetch = [
        "python3",
        "-c",
        f"'{_FETCH_SCRIPT}'",
        shlex.quote(ctx.pilot_zipapp_url),
        _in_vm(PILOT_ZIPAPP),
        ctx.pilot_sha256 or pilot_zipapp().sha256,
    ]
    if ctx.ca_pem is not None:
        fetch.append(_in_vm(CA_FILE))
    # One command, so that the pilot runs only if the download was complete and its digest the pinned one.
    run = f"{' '.join(fetch)} && {' '.join(pilot)}"
    if source_env:
        # set -a exports what the file assigns, so the pilot and its payloads see MACHINEFEATURES/JOBFEATURES.
        run = f"set -a; . {_in_vm(ENV_FILE)}; set +a; {run}"
    # A system account without a login shell or home; not on a local-cloud "VM", which runs on the host.
    add_user = (
        f'[ -n "${{{VM_ROOT_VAR}:-}}" ] || id -u {PAYLOAD_USER} >/dev/null 2>&1 || '
        f"useradd --system --no-create-home --shell /usr/sbin/nologin {PAYLOAD_USER}"
    )
    return [f"mkdir -p {_in_vm('/opt/cloudpilot')} {_in_vm(PILOT_WORKDIR)}", add_user, run]


def _multipart(cloud_config: str, extra_parts: Sequence[UserDataPart]) -> str:
    """MIME multipart/mixed with our cloud-config first, as cloud-init's ``make-mime`` builds it."""
    parts = [_mime_part("text/cloud-config", cloud_config, "cloudpilot.cfg")]
    for index, part in enumerate(extra_parts, start=1):
        if not _TEXT_TYPE.fullmatch(part.content_type):
            raise InvalidContext(f"extra_parts[{index - 1}]", f"content type {part.content_type!r} is not text/…")
        if part.filename is not None and not _FILENAME.fullmatch(part.filename):
            raise InvalidContext(f"extra_parts[{index - 1}]", f"{part.filename!r} is not a plain file name")
        if part.content_type == "text/x-shellscript" and not part.content.startswith("#!"):
            # cloud-init executes the script file directly; without a #! line that fails at boot.
            raise InvalidContext(f"extra_parts[{index - 1}]", "a shell script must start with a #! line")
        # cloud-init runs its scripts, runcmd's (named "runcmd") included, in file name order: "part-NNN"
        # sorts first, so the site's and VO's scripts run in the given order before the pilot starts.
        name = f"part-{index:03d}" + (f"-{part.filename}" if part.filename else "")
        mime = _mime_part(part.content_type, part.content, name)
        if part.content_type == "text/cloud-config":
            mime["Merge-Type"] = EXTRA_CLOUD_CONFIG_MERGE
        parts.append(mime)
    message = MIMEMultipart("mixed", boundary=_boundary([cloud_config, *(p.content for p in extra_parts)]))
    for mime in parts:
        message.attach(mime)
    return message.as_string()


def _mime_part(content_type: str, content: str, filename: str) -> MIMEText:
    # ASCII stays readable (7bit); anything else goes as base64 UTF-8.
    charset = "us-ascii" if content.isascii() else "utf-8"
    part = MIMEText(content, content_type.split("/", 1)[1], charset)
    part.add_header("Content-Disposition", "attachment", filename=filename)
    return part


def _boundary(contents: list[str]) -> str:
    """A boundary derived from the contents (the same user-data for the same inputs) that none contains."""
    digest = hashlib.sha256("\0".join(contents).encode()).hexdigest()
    for start in range(0, len(digest) - 24):
        boundary = f"==cloudpilot-{digest[start : start + 24]}=="
        if not any(boundary in c for c in contents):
            return boundary
    raise InvalidContext("extra_parts", "no MIME boundary fits these contents")


def _in_vm(path: str) -> str:
    """A shell word for ``path`` inside the VM's root: ``"${CLOUDPILOT_VM_ROOT:-}"'/etc/…'``."""
    return f'"${{{VM_ROOT_VAR}:-}}"{shlex.quote(path)}'


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _printable(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip()) and value.isprintable()


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (file contents, the fetch script) as literal blocks, readable on the VM."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)

"""User-data: valid for cloud-init's own schema validator, the token only in its file, MIME parts, size limit."""

from __future__ import annotations

import base64
import email
import urllib.parse
from pathlib import Path

import pytest
import yaml

from cloudpilot.context import (
    CONFIG_FILE,
    ENV_FILE,
    MAX_USER_DATA_BYTES,
    TOKEN_FILE,
    InvalidContext,
    InvalidUserData,
    PilotContext,
    UserDataPart,
    UserDataTooLarge,
    build_user_data,
    cloud_config_of,
    parse_cloud_config,
    redact,
)
from tests.helpers.cloudinit import cloud_init_schema

TOKEN = "cpt_pilot-0123456789abcdefTOKEN"


def typical(**changes: object) -> PilotContext:
    values: dict[str, object] = {
        "server_url": "https://tq.example.org:8443",
        "vm_id": "vm-0001",
        "vo": "lhcb",
        "pilot_token": TOKEN,
        "cores": 4,
        "memory_mb": 8192,
        "site": "CERN",
        "cloud": "openstack-1",
        "tags": ("gpu", "big mem"),
        "lifetime_seconds": 86400,
        "idle_timeout_seconds": 300,
        "machinefeatures_url": "/etc/machinefeatures",
        "jobfeatures_url": "https://mjf.example.org/jobfeatures/vm-0001",
    }
    values.update(changes)
    return PilotContext(**values)  # type: ignore[arg-type]


def files_of(config: dict) -> dict[str, dict]:
    return {f["path"]: f for f in config["write_files"]}


@pytest.mark.parametrize(
    "ctx",
    [
        typical(),
        PilotContext("http://127.0.0.1:8080", "vm-2", "atlas", TOKEN),  # every option left to the pilot
    ],
    ids=["typical", "minimal"],
)
def test_user_data_passes_cloud_init_schema_validation(tmp_path: Path, ctx: PilotContext) -> None:
    result = cloud_init_schema(tmp_path, build_user_data(ctx))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_the_validator_does_reject_a_broken_cloud_config(tmp_path: Path) -> None:
    # Guards the test above against a validator that accepts anything.
    broken = "#cloud-config\n" + yaml.safe_dump({**cloud_config_of(typical()), "runcmd": 5})
    result = cloud_init_schema(tmp_path, broken)
    assert result.returncode != 0
    assert "runcmd" in result.stdout + result.stderr


def test_user_data_writes_config_token_and_mjf_files_and_runs_the_pilot() -> None:
    user_data = build_user_data(typical())
    assert user_data.startswith("#cloud-config\n")
    config = parse_cloud_config(user_data)
    files = files_of(config)
    assert set(files) == {CONFIG_FILE, TOKEN_FILE, ENV_FILE}
    assert files[TOKEN_FILE]["permissions"] == "0600"
    public = yaml.safe_load(files[CONFIG_FILE]["content"])  # JSON is YAML
    assert public["server_url"] == "https://tq.example.org:8443"
    assert public["vm_id"] == "vm-0001" and public["vo"] == "lhcb" and public["token_file"] == TOKEN_FILE
    assert public["tags"] == ["gpu", "big mem"]
    env = files[ENV_FILE]["content"]
    assert 'MACHINEFEATURES="${CLOUDPILOT_VM_ROOT:-}"/etc/machinefeatures' in env
    assert "JOBFEATURES=https://mjf.example.org/jobfeatures/vm-0001" in env

    runcmd = config["runcmd"]
    assert all(isinstance(c, str) for c in runcmd)
    pilot = runcmd[-1]  # fetched, checked and run in one command: the pilot runs only if the check passed
    assert "https://tq.example.org:8443/pilot.pyz" in pilot
    for option in (
        "--server https://tq.example.org:8443",
        '--token-file "${CLOUDPILOT_VM_ROOT:-}"/etc/cloudpilot/pilot.token',
        '--workdir "${CLOUDPILOT_VM_ROOT:-}"/var/lib/cloudpilot',
        "--cores 4",
        "--memory-mb 8192",
        "--site CERN",
        "--cloud openstack-1",
        "--tags 'gpu,big mem'",
        "--lifetime 86400",
        "--idle-timeout 300",
    ):
        assert option in pilot
    assert config["power_state"]["mode"] == "poweroff" and config["power_state"]["condition"] is True
    assert set(config) == {"write_files", "runcmd", "power_state"}  # the subset the local driver applies


def test_the_token_is_only_in_the_token_file() -> None:
    user_data = build_user_data(typical())
    assert user_data.count(TOKEN) == 1
    config = parse_cloud_config(user_data)
    assert files_of(config)[TOKEN_FILE]["content"].strip() == TOKEN
    for path, entry in files_of(config).items():
        if path != TOKEN_FILE:
            assert TOKEN not in entry["content"]
    assert not any(TOKEN in command for command in config["runcmd"])
    assert TOKEN not in repr(typical())


def test_mime_multipart_with_a_shell_script_parses_back_and_validates(tmp_path: Path) -> None:
    script = "#!/bin/sh\necho site setup\n"
    vo_config = "#cloud-config\nruncmd:\n- echo vo\n"
    user_data = build_user_data(
        typical(),
        [UserDataPart("text/x-shellscript", script, "setup.sh"), UserDataPart("text/cloud-config", vo_config)],
    )
    assert user_data == build_user_data(  # the same inputs give the same bytes
        typical(),
        [UserDataPart("text/x-shellscript", script, "setup.sh"), UserDataPart("text/cloud-config", vo_config)],
    )
    message = email.message_from_string(user_data)
    assert message.get_content_type() == "multipart/mixed"
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/x-shellscript", "text/cloud-config"]
    assert parts[1].get_payload(decode=True).decode() == script
    # Named to sort before cloud-init's "runcmd" script: site scripts run before the pilot starts.
    assert parts[1].get_filename() == "part-001-setup.sh" < "runcmd"
    assert parts[2]["Merge-Type"] == "dict(no_replace,recurse_list)+list(append)+str()"

    ours = parse_cloud_config(user_data)
    assert ours == cloud_config_of(typical())
    result = cloud_init_schema(tmp_path, parts[0].get_payload(decode=True).decode())
    assert result.returncode == 0, result.stdout + result.stderr


def test_non_ascii_parts_survive_the_round_trip() -> None:
    script = "#!/bin/sh\necho 'Genève'\n"
    user_data = build_user_data(typical(site="Genève"), [UserDataPart("text/x-shellscript", script)])
    parts = email.message_from_string(user_data).get_payload()
    assert parts[1].get_payload(decode=True).decode("utf-8") == script
    assert "--site 'Genève'" in parse_cloud_config(user_data)["runcmd"][-1]


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (UserDataPart("application/zip", "x"), "is not text/"),
        (UserDataPart("text/x-shellscript", "echo no shebang"), "#! line"),
        (UserDataPart("text/x-shellscript", "#!/bin/sh\n", "../evil"), "plain file name"),
    ],
)
def test_unusable_parts_are_refused(part: UserDataPart, message: str) -> None:
    with pytest.raises(InvalidContext, match=message):
        build_user_data(typical(), [part])


def test_user_data_over_16_kb_is_refused_with_the_numbers() -> None:
    def with_padding(n: int) -> str:
        return build_user_data(typical(), [UserDataPart("text/x-shellscript", "#!/bin/sh\n" + "#" * n + "\n")])

    base = len(with_padding(0).encode())
    exact = with_padding(MAX_USER_DATA_BYTES - base)
    assert len(exact.encode()) == MAX_USER_DATA_BYTES  # at the limit is fine
    with pytest.raises(UserDataTooLarge) as caught:
        with_padding(MAX_USER_DATA_BYTES - base + 1)
    assert caught.value.size == MAX_USER_DATA_BYTES + 1 and caught.value.limit == 16384
    assert f"{MAX_USER_DATA_BYTES + 1} bytes" in str(caught.value) and "16384-byte limit" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_parse_cloud_config_round_trips_and_refuses_other_user_data() -> None:
    ctx = typical(machinefeatures_url=None, jobfeatures_url=None, tags=())
    assert parse_cloud_config(build_user_data(ctx)) == cloud_config_of(ctx)
    assert ENV_FILE not in files_of(cloud_config_of(ctx))
    assert parse_cloud_config("#cloud-config\n") == {}
    with pytest.raises(InvalidUserData, match="neither"):
        parse_cloud_config("#!/bin/sh\necho hi\n")
    with pytest.raises(InvalidUserData, match="not a mapping"):
        parse_cloud_config("#cloud-config\n- a\n")
    only_script = (
        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
        "--b\nContent-Type: text/x-shellscript\n\n#!/bin/sh\n--b--\n"
    )
    with pytest.raises(InvalidUserData, match="no text/cloud-config part"):
        parse_cloud_config(only_script)


def test_invalid_contexts_name_the_field_and_never_the_token() -> None:
    with pytest.raises(InvalidContext, match="server_url"):
        typical(server_url="ftp://x")
    with pytest.raises(InvalidContext, match="pilot_token") as caught:
        typical(pilot_token=TOKEN + "\nruncmd: [evil]")
    assert TOKEN not in str(caught.value)
    with pytest.raises(InvalidContext, match="tags"):
        typical(tags=("a,b",))
    with pytest.raises(InvalidContext, match="cores"):
        typical(cores=0)
    with pytest.raises(InvalidContext, match="lifetime_seconds"):
        typical(lifetime_seconds=float("inf"))


def test_redact_masks_the_secret_in_plain_url_and_base64_forms() -> None:
    assert redact(f"cloud said: bad token {TOKEN}!", [TOKEN]) == "cloud said: bad token ***!"
    assert TOKEN not in redact(f"?t={urllib.parse.quote(TOKEN, safe='')}", [TOKEN])
    assert urllib.parse.quote(TOKEN, safe="") not in redact(f"?t={urllib.parse.quote(TOKEN, safe='')}", [TOKEN])
    # Clouds may echo the whole user-data base64-encoded; the token sits at any offset in it.
    for prefix in ("", "a", "ab", "abc"):
        echoed = base64.b64encode(f"{prefix}token: {TOKEN}\nmore".encode()).decode()
        masked = redact(f"InvalidParameterValue: UserData {echoed}", [TOKEN])
        assert "***" in masked
        assert masked.startswith("InvalidParameterValue: UserData ")
    assert redact("nothing secret here", [TOKEN, None, ""]) == "nothing secret here"
    assert redact("abc", ["", None]) == "abc"

"""The README's "Using it" works as written: a server on the demo's clouds (examples/server.yaml), tokens from
`cloudpilot token create`, the README's own job description submitted with `cloudpilot submit` and run on those
clouds, and a pilot of one's own fetched with `curl $SERVER/pilot.pyz` and run with a bare python3."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from cloudpilot.cli.demo import DEMO_CONFIG
from tests.helpers.server import own_user_clouds, this_user
from tests.helpers.server_process import CLI, ServerProcesses

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def readme_job() -> dict:
    """The job description the README shows (its first YAML block after "A job description")."""
    block = re.search(r"A job description.*?```yaml\n(.*?)```", README, re.S)
    assert block is not None, "the README lost its job description"
    return yaml.safe_load(block.group(1))


def test_the_readme_points_only_at_files_of_the_repository() -> None:
    for path in re.findall(r"\b((?:examples|docs|scenarios|benchmarks)/[\w./-]+\w)", README):
        assert (REPO / path).exists(), f"the README names {path}, which the repository does not have"
    assert "../shared" not in README and "steering repository" not in README
    # examples/server.yaml is the demo's clouds, as the README says.
    assert yaml.safe_load((REPO / "examples/server.yaml").read_text())["clouds"] == DEMO_CONFIG["clouds"]


def test_using_it_verbatim_on_the_demos_clouds(server_processes: ServerProcesses, tmp_path: Path) -> None:
    # As a user in a directory of their own (every command runs there), with the example next to the job file.
    shutil.copy(REPO / "examples/montecarlo/mc.py", tmp_path / "mc.py")
    # examples/server.yaml as it is, but for the payloads' user: as root, local VMs run payloads as nobody,
    # who cannot reach this suite's interpreter (under /root) nor pytest's 0700 temp dirs (README says so).
    config = yaml.safe_load((REPO / "examples/server.yaml").read_text())
    config["clouds"] = own_user_clouds(config["clouds"])
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(config))
    server = server_processes.start(tmp_path / "data", "--config", str(tmp_path / "server.yaml"))

    def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CLOUDPILOT_URL": server.url, **({"CLOUDPILOT_TOKEN": token} if token else {})}
        return subprocess.run(
            [*CLI, *args], capture_output=True, text=True, env=env, timeout=120, check=False, cwd=tmp_path
        )

    tokens = {}
    for who, args in {"alice": ["--role", "user", "--vo", "lhcb", "--name", "alice"], "pilot": ["--role", "pilot",
                      "--vo", "lhcb"]}.items():  # fmt: skip
        made = cli("token", "create", "--data-dir", "data", *args)
        assert made.returncode == 0, made.stderr
        tokens[who] = made.stdout.strip()
        (tmp_path / f"{who}.token").write_text(tokens[who] + "\n")

    # The README's job (tags el9: the demo's clouds offer it), with fewer jobs than its 200.
    document = readme_job()
    document["parameter_count"] = 3
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(document))
    submitted = cli("submit", "job.yaml", token=tokens["alice"])
    assert submitted.returncode == 0, submitted.stderr
    ids = [int(line) for line in submitted.stdout.split()]
    assert len(ids) == 3 and "warning" not in submitted.stderr
    waited = cli("wait", token=tokens["alice"])
    assert waited.returncode == 0, waited.stderr
    shown = cli("jobs", "--json", token=tokens["alice"])
    assert {j["state"] for j in json.loads(shown.stdout)} == {"done"}

    # A pilot of one's own: the zipapp from the server, a bare python3, a token file; it runs a job only it
    # offers the tag for.
    (tmp_path / "pilot.pyz").write_bytes(httpx.get(f"{server.url}/pilot.pyz").content)
    mine = {"name": "mine", "executable": "python3", "arguments": ["-c", "print('hi')"],
            "requirements": {"tags": ["my-own"], "wall_seconds": 60}}  # fmt: skip
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine))
    submitted = cli("submit", "mine.yaml", token=tokens["alice"])
    assert "no configured cloud can run it" in submitted.stderr  # it waits for a pilot such as this one
    (job_id,) = [int(line) for line in submitted.stdout.split()]
    python3 = shutil.which("python3") or sys.executable
    pilot = subprocess.run(
        [python3, "pilot.pyz", "--server", server.url, "--token-file", "pilot.token", "--cores", "1",
         "--tags", "my-own", "--idle-timeout", "3", "--payload-user", this_user()],  # as root: see above
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    job = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {tokens['alice']}"})
    assert job.json()["state"] == "done", pilot.stderr

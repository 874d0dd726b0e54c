"""The CLI starts fast: `cloudpilot --help`, `jobs` and `job` load no server, store, simulator, cloud SDK or crypto.

Timing is left to people (``python -X importtime -c 'import cloudpilot.cli.main'``); what makes it slow is held
here deterministically: the heavy packages must not be imported at all.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cloudpilot

HEAVY = ("matplotlib", "numpy", "libcloud", "sqlalchemy", "fastapi", "starlette", "uvicorn", "cryptography")

# Runs a command the way the console script does, then reports which heavy packages got imported.
PROBE = """
import json, sys
from cloudpilot.cli.main import app
try:
    app(sys.argv[1:], prog_name="cloudpilot")
except SystemExit:
    pass
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(%r)))
print("LOADED=" + json.dumps(loaded))
"""


def loaded_by(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE % json.dumps(HEAVY), *args], capture_output=True, text=True, timeout=120
    )
    marker = [line for line in done.stdout.splitlines() if line.startswith("LOADED=")]
    assert marker, done.stdout + done.stderr
    return list(json.loads(marker[-1].removeprefix("LOADED=")))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["jobs", "--help"],
        ["job", "--help"],
        # A real client command up to the request (no server listens on port 9): it must not load them either.
        ["jobs", "--url", "http://127.0.0.1:9", "--token", "t"],
        ["job", "1", "--url", "http://127.0.0.1:9", "--token", "t"],
        ["kill", "1", "--url", "http://127.0.0.1:9", "--token", "t"],
        ["token", "--help"],
        ["simulate", "--help"],
        ["image", "--help"],
    ],
)
def test_client_commands_import_nothing_heavy(args: list[str]) -> None:
    assert loaded_by(*args) == []


def test_importing_the_cli_loads_nothing_heavy() -> None:
    """The same through ``-X importtime``, which also prints the cost (shown with ``pytest -s``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import cloudpilot.cli.main"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    modules = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    assert modules[-1] == "cloudpilot.cli.main"
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    print(f"import cloudpilot.cli.main: {int(done.stderr.splitlines()[-1].split('|')[1]) / 1e6:.3f} s")


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloudpilot.cli.main", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"cloudpilot {cloudpilot.__version__}"

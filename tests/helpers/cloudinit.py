"""cloud-init's own schema validator, run on a document."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cloud_init_schema(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    """``cloud-init schema --config-file`` on ``config``; skipped without cloud-init, except on CI."""
    if shutil.which("cloud-init") is None:
        if ON_CI:
            pytest.fail("cloud-init is not installed (.ci/run installs it), and on CI the schema tests must run")
        pytest.skip("cloud-init is not installed (apt-get install cloud-init)")
    path = tmp_path / "user-data.yaml"
    path.write_text(config)
    return subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )

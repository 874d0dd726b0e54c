"""``cloudpilot simulate``: the table, the speed line, the PNGs and metrics.json; --compare; bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cloudpilot.cli.main import app
from cloudpilot.sim import policies

TINY = "scenarios/tiny.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_simulate_prints_the_table_and_writes_plots_and_metrics(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", TINY, "--out", str(tmp_path), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "events/s" in result.output and "makespan h" in result.output and "cloudpilot" in result.output
    png = tmp_path / "cloudpilot.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    (metrics,) = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["jobs_done"] == 200 and metrics["policy"] == "cloudpilot"


def test_compare_runs_every_policy_one_row_each(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", TINY, "--out", str(tmp_path), "--compare"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["policy"] for r in rows] == policies.names()
    for name in policies.names():
        assert name in result.output
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    if len(rows) > 1:
        assert (tmp_path / "compare.png").read_bytes()[:8] == PNG_MAGIC


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["simulate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no scenario file" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nclouds: {a: {flavors: {s: {cores: 1, memory_mb: 1}}, max_vm: 3}}\nworkload: []\n")
    invalid = runner.invoke(app, ["simulate", str(bad)])
    assert invalid.exit_code == 2 and "max_vm" in invalid.output
    unknown = runner.invoke(app, ["simulate", TINY, "--policy", "nobody", "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown policy 'nobody'" in unknown.output

"""``python -m cloudpilot.pilot`` (and the pilot zipapp)."""

from __future__ import annotations

from cloudpilot.pilot.cli import run

if __name__ == "__main__":
    run()

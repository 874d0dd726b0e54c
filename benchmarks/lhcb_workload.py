"""Moved to :mod:`cloudpilot.sim.lhcb` (the simulator's LHCb backlog uses it); kept so old imports still work."""

from __future__ import annotations

import sys

from cloudpilot.sim.lhcb import DEFAULT_DATA_DIR, VO, QueueClass, WorkloadModel, load_model, main, offer_fits

__all__ = ["DEFAULT_DATA_DIR", "VO", "QueueClass", "WorkloadModel", "load_model", "offer_fits"]

if __name__ == "__main__":
    main(sys.argv[1:])

"""Discrete-event simulator: simulated clouds and pilots around the real provisioning and matching policies.

``simulate(load_scenario("scenarios/vmdirac-2013.yaml"))`` runs a scenario; ``cloudpilot simulate`` is its command.
See docs/simulator.md.
"""

from cloudpilot.sim.metrics import SimResult
from cloudpilot.sim.scenario import Scenario, load_scenario
from cloudpilot.sim.simulation import Simulation, simulate

__all__ = ["Scenario", "SimResult", "Simulation", "load_scenario", "simulate"]

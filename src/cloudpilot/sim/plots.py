"""PNG plots of a run: VMs and running jobs over time, per cloud (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display needed

import matplotlib.pyplot as plt
import numpy as np

from cloudpilot.sim.metrics import HOUR, SimResult


def timeline(result: SimResult, path: Path) -> Path:
    """One panel per cloud: VMs (not yet destroyed) and jobs running, against hours."""
    series = result.series
    hours = np.frombuffer(series.times, dtype=np.float64) / HOUR
    clouds = list(series.vms)
    fig, axes = plt.subplots(len(clouds), 1, figsize=(9, 2.4 * len(clouds) + 0.8), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], clouds, strict=True):
        ax.plot(hours, np.frombuffer(series.vms[name], dtype=np.int32), label="VMs", drawstyle="steps-post")
        ax.plot(hours, np.frombuffer(series.jobs[name], dtype=np.int32), label="jobs running", drawstyle="steps-post")
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_ylabel("count")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("hours")
    fig.suptitle(f"{result.scenario} — {result.policy} (seed {result.seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def comparison(results: Sequence[SimResult], path: Path) -> Path:
    """All clouds together, one line per policy: VMs (top) and jobs running (bottom)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in results:
        hours = np.frombuffer(r.series.times, dtype=np.float64) / HOUR
        vms = sum(np.frombuffer(v, dtype=np.int32).astype(np.int64) for v in r.series.vms.values())
        jobs = sum(np.frombuffer(v, dtype=np.int32).astype(np.int64) for v in r.series.jobs.values())
        top.plot(hours, vms, label=r.policy, drawstyle="steps-post")
        bottom.plot(hours, jobs, label=r.policy, drawstyle="steps-post")
    top.set_ylabel("VMs")
    bottom.set_ylabel("jobs running")
    bottom.set_xlabel("hours")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=8)
    fig.suptitle(f"{results[0].scenario}: policies side by side" if results else "")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

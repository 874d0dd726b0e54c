"""The Kubernetes cluster-autoscaler with its default flags: scale up for pods that fit on no node, remove nodes
unneeded for 10 minutes, back a node group off (5 minutes, doubling up to 30) when its new nodes fail.

Sources (github.com/kubernetes/autoscaler)
- cluster-autoscaler/FAQ.md at 0024f2540ecebb95ac72ceb28da995f1f7bc0491
  (https://github.com/kubernetes/autoscaler/blob/master/cluster-autoscaler/FAQ.md): "How does scale-up work?",
  "How does scale-down work?", "What are the parameters to CA?": ``scan-interval`` 10 s; scale-up when pods
  fail to schedule and a new node of some group would fit them, counting nodes still coming up; new nodes
  are expected within ``max-node-provision-time`` 15 min, after which they are no longer counted, the group may
  be backed off and the unregistered nodes are removed; expander ``random``; a node is unneeded when its
  requests are below ``scale-down-utilization-threshold`` 0.5 of its allocatable and its pods fit elsewhere;
  removed after ``scale-down-unneeded-time`` 10 min; no scale-down for ``scale-down-delay-after-add`` 10 min
  after a scale-up nor ``scale-down-delay-after-delete`` (the scan interval) after a removal; empty nodes are
  removed in bulk (``max-empty-bulk-delete``/``max-scale-down-parallelism`` 10), non-empty ones one at a time
  (``max-drain-parallelism`` 1).
- cluster-autoscaler/main.go at c312688777e0700ba063128936878bf0c8624b01: ``initial-node-group-backoff-duration``
  5 min, ``max-node-group-backoff-duration`` 30 min, ``node-group-backoff-reset-timeout`` 3 h;
  ``max-nodes-per-scaleup`` 1000.
- cluster-autoscaler/utils/backoff/exponential_backoff.go at 5f4d58361ff07aee84b040b2989f82697c510620: a
  failure while the group is not backed off doubles the last duration (capped), one while it is backed off keeps
  it; a group whose last failure is older than the reset timeout starts again from 5 min.
- cluster-autoscaler/clusterstate/clusterstate.go (``updateScaleRequests``): a scale-up whose nodes have all
  registered removes the group's back-off; one not done by its expected time backs the group off.

Rules as implemented (one scan every ``scan_interval_s``; calls in between do nothing)
1. Cluster state: a new boot failure of a cloud (``last_boot_failure_at`` later than the last one seen) backs
   its group off from that time; a VM still requested/booting ``max_node_provision_time_s`` after its creation
   backs its group off now, stops being counted and is stopped. A group whose scale-up has no VM coming up any
   more and no new failure has its back-off removed.
2. Scale-up: waiting jobs are first placed on the free cores of running and coming-up VMs of their VO on clouds
   that suit them; for the rest, every (cloud, VO, flavor) group that could run some of them — not backed off,
   with room in the cloud's quota and start rate — is an option, sized by first-fit bin packing of those jobs
   (cut to the quota and 1000 nodes); the ``random`` expander picks one (seeded generator); one group per scan.
3. Scale-down: a running VM whose busy cores are below half of its cores, and whose busy cores fit on the free
   cores of other running VMs of its VO on its cloud that are not themselves removed (the moves are
   remembered), is unneeded since the first scan that found it so; none is removed within 10 min of a scale-up
   or in the scan after a removal; otherwise up to 10 VMs unneeded for 10 min are stopped, at most one of them
   running jobs (its jobs are evicted and go back to waiting, as evicted pods are rescheduled).

Simplifications: a node group is a (cloud, VO, image, flavor), because a pilot runs its own VO's jobs only, on
its image; back-off is kept per cloud, since cloudpilot reports boot failures per cloud; utilization counts cores
only (memory in use is not in the snapshot) and a VM's jobs are treated as divisible cores when checking they fit
elsewhere; they may only move within the same cloud (their site and tag constraints are not in the snapshot);
``scale-down-delay-after-failure`` has no counterpart (a stop does not fail in the snapshot); a cloud with a
pending shutdown is not scaled up.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from cloudpilot.domain.provisioning import Action, CloudView, ProvisioningSnapshot, StartVMs, StopVM, VMView, WorkClass
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.policy.budget import jobs_per_vm, suits
from cloudpilot.policy.peers._common import LIVE, UPCOMING, Every, Slot, budgets, fill, free_slots, image_of, startable


@dataclass
class _Backoff:
    duration: float
    until: float
    last_failed: float


class ClusterAutoscalerPolicy:
    name = "cluster-autoscaler"

    def __init__(
        self,
        scan_interval_s: float = 10.0,
        scale_down_unneeded_time_s: float = 600.0,
        scale_down_delay_after_add_s: float = 600.0,
        scale_down_delay_after_delete_s: float | None = None,  # None: the scan interval
        scale_down_utilization_threshold: float = 0.5,
        max_node_provision_time_s: float = 900.0,
        initial_node_group_backoff_s: float = 300.0,
        max_node_group_backoff_s: float = 1800.0,
        node_group_backoff_reset_timeout_s: float = 3 * 3600.0,
        max_scale_down_parallelism: int = 10,
        max_drain_parallelism: int = 1,
        max_nodes_per_scaleup: int = 1000,
        seed: int = 0,
    ) -> None:
        self.scan_interval_s = scan_interval_s
        self.scale_down_unneeded_time_s = scale_down_unneeded_time_s
        self.scale_down_delay_after_add_s = scale_down_delay_after_add_s
        self.scale_down_delay_after_delete_s = (
            scan_interval_s if scale_down_delay_after_delete_s is None else scale_down_delay_after_delete_s
        )
        self.scale_down_utilization_threshold = scale_down_utilization_threshold
        self.max_node_provision_time_s = max_node_provision_time_s
        self.initial_node_group_backoff_s = initial_node_group_backoff_s
        self.max_node_group_backoff_s = max_node_group_backoff_s
        self.node_group_backoff_reset_timeout_s = node_group_backoff_reset_timeout_s
        self.max_scale_down_parallelism = max_scale_down_parallelism
        self.max_drain_parallelism = max_drain_parallelism
        self.max_nodes_per_scaleup = max_nodes_per_scaleup
        self._scan = Every(scan_interval_s)
        self._rng = random.Random(seed)  # the random expander, reproducible
        self.backoffs: dict[str, _Backoff] = {}
        self.unneeded_since: dict[str, float] = {}
        self.last_scale_up_at: float | None = None
        self.last_scale_down_at: float | None = None
        self._scale_ups: dict[str, float] = {}  # cloud -> time of its pending scale-up
        self._failure_seen: dict[str, float] = {}
        self._timed_out: set[str] = set()

    def backed_off(self, cloud: str, now: float) -> bool:
        b = self.backoffs.get(cloud)
        return b is not None and b.until > now

    def decide(self, snapshot: ProvisioningSnapshot, now: float) -> list[Action]:
        if not self._scan.due(now):
            return []
        actions: list[Action] = list(self._update_cluster_state(snapshot, now))
        gone = {a.vm_id for a in actions if isinstance(a, StopVM)}
        scale_up = self._scale_up(snapshot, gone, now)
        if scale_up is not None:
            actions.append(scale_up)
        actions.extend(self._scale_down(snapshot, gone, now, scaled_up=scale_up is not None))
        return actions

    # --- cluster state and back-off ------------------------------------------------------------------------

    def _backoff(self, cloud: str, at: float) -> None:
        duration = self.initial_node_group_backoff_s
        info = self.backoffs.get(cloud)
        if info is not None:
            duration = info.duration  # failures during a back-off do not lengthen it
            if info.until < at:
                duration = min(2 * info.duration, self.max_node_group_backoff_s)
        self.backoffs[cloud] = _Backoff(duration, at + duration, at)

    def _update_cluster_state(self, snapshot: ProvisioningSnapshot, now: float) -> list[StopVM]:
        reset = self.node_group_backoff_reset_timeout_s
        self.backoffs = {c: b for c, b in self.backoffs.items() if b.last_failed + reset >= now}
        stops: list[StopVM] = []
        failed: set[str] = set()
        for cloud in snapshot.clouds:
            at = cloud.last_boot_failure_at
            if at is not None and at > self._failure_seen.get(cloud.name, -math.inf):
                self._failure_seen[cloud.name] = at
                self._backoff(cloud.name, at)
                failed.add(cloud.name)
            for vm in cloud.vms:
                late = now - vm.created_at > self.max_node_provision_time_s
                if vm.state in UPCOMING and vm.id not in self._timed_out and late:
                    self._timed_out.add(vm.id)
                    self._backoff(cloud.name, now)
                    failed.add(cloud.name)
                    if vm.state is VMState.BOOTING:  # a requested VM has no instance to remove yet
                        limit = self.max_node_provision_time_s
                        stops.append(StopVM(vm.id, f"cluster-autoscaler: not registered within {limit:.0f} s"))
        by_name = {c.name: c for c in snapshot.clouds}
        for name in list(self._scale_ups):
            cloud = by_name.get(name)
            if name in failed or cloud is None:
                self._scale_ups.pop(name)
                continue
            if not any(vm.state in UPCOMING and vm.id not in self._timed_out for vm in cloud.vms):
                self._scale_ups.pop(name)
                self.backoffs.pop(name, None)  # the scale-up finished: the group is healthy again
        return stops

    # --- scale-up ------------------------------------------------------------------------------------------

    def _scale_up(self, snapshot: ProvisioningSnapshot, gone: set[str], now: float) -> StartVMs | None:
        slots = free_slots(snapshot, LIVE, gone | self._timed_out)
        pending: list[tuple[WorkClass, int]] = []
        for wc in sorted(snapshot.work, key=lambda w: (-w.waiting * w.cores, w.vo)):
            if wc.waiting <= 0:
                continue
            left = wc.waiting
            for cloud in snapshot.clouds:
                if left > 0 and suits(cloud, wc):
                    left = fill(slots[(cloud.name, wc.vo)], wc, left, cloud)
            if left > 0:
                pending.append((wc, left))
        if not pending:
            return None
        room = budgets(snapshot)
        options: list[tuple[str, str, str, str, int]] = []  # (cloud, VO, flavor, image or "", nodes)
        for cloud in startable(snapshot):
            if self.backed_off(cloud.name, now):
                continue
            # A group's nodes are alike: one VO (a pilot runs its VO's jobs only) and one image.
            groups: dict[tuple[str, str], list[tuple[WorkClass, int]]] = {}
            for wc, n in pending:
                if suits(cloud, wc):
                    groups.setdefault((wc.vo, image_of(cloud, wc) or ""), []).append((wc, n))
            for (vo, image), classes in sorted(groups.items()):
                for fl in cloud.flavors:
                    fits = [(wc, n) for wc, n in classes if jobs_per_vm(fl, wc) > 0]
                    if not fits:
                        continue
                    cap = min(self.max_nodes_per_scaleup, room[cloud.name].vms_allowed(fl, vo))
                    nodes = _binpack(fl, fits, cap, cloud)
                    if nodes > 0:
                        options.append((cloud.name, vo, fl.name, image, nodes))
        if not options:
            return None
        cloud_name, vo, flavor_name, image, nodes = self._rng.choice(sorted(options))
        self.last_scale_up_at = now
        self._scale_ups[cloud_name] = now
        jobs = sum(n for wc, n in pending if wc.vo == vo)
        return StartVMs(
            cloud_name,
            vo,
            flavor_name,
            nodes,
            f"cluster-autoscaler: {jobs} {vo} job(s) fit on no VM; group {cloud_name}/{flavor_name} "
            f"chosen at random of {len(options)}",
            image or None,
        )

    # --- scale-down ----------------------------------------------------------------------------------------

    def _scale_down(self, snapshot: ProvisioningSnapshot, gone: set[str], now: float, scaled_up: bool) -> list[StopVM]:
        running: list[tuple[str, VMView]] = [
            (c.name, vm) for c in snapshot.clouds for vm in c.vms if vm.state is VMState.RUNNING and vm.id not in gone
        ]
        free = {vm.id: float(vm.free_cores) for _, vm in running}
        unneeded: set[str] = set()
        # Least used first, as a node's pods are simulated onto the others and remembered there.
        for cloud_name, vm in sorted(running, key=lambda cv: (cv[1].cores - cv[1].free_cores, cv[1].id)):
            busy = vm.cores - free[vm.id]
            if busy >= self.scale_down_utilization_threshold * vm.cores:
                continue
            if busy > 0:
                dests = [
                    d
                    for c, d in running
                    if c == cloud_name
                    and (d.vo, d.image) == (vm.vo, vm.image)  # a pilot's jobs need its VO and its image
                    and d.id != vm.id
                    and d.id not in unneeded
                    and free[d.id] > 0
                ]
                if sum(free[d.id] for d in dests) < busy:
                    continue
                for d in sorted(dests, key=lambda d: (-free[d.id], d.id)):
                    took = min(free[d.id], busy)
                    free[d.id] -= took
                    busy -= took
                    if busy <= 0:
                        break
            unneeded.add(vm.id)
        self.unneeded_since = {i: self.unneeded_since.get(i, now) for i in unneeded}

        if scaled_up or _within(self.last_scale_up_at, self.scale_down_delay_after_add_s, now):
            return []
        if _within(self.last_scale_down_at, self.scale_down_delay_after_delete_s, now):
            return []
        by_id = {vm.id: vm for _, vm in running}
        ready = sorted(
            (since, i) for i, since in self.unneeded_since.items() if now - since >= self.scale_down_unneeded_time_s
        )
        empty = [i for _, i in ready if by_id[i].free_cores >= by_id[i].cores]
        busy_ones = [i for _, i in ready if by_id[i].free_cores < by_id[i].cores]
        chosen = empty[: self.max_scale_down_parallelism]
        chosen += busy_ones[: max(0, min(self.max_drain_parallelism, self.max_scale_down_parallelism - len(chosen)))]
        if not chosen:
            return []
        self.last_scale_down_at = now
        stops = []
        for i in chosen:
            unneeded_for = now - self.unneeded_since.pop(i)
            stops.append(StopVM(i, f"cluster-autoscaler: unneeded for {unneeded_for:.0f} s"))
        return stops


def _within(since: float | None, period: float, now: float) -> bool:
    return since is not None and now - since < period


def _binpack(fl: Flavor, classes: list[tuple[WorkClass, int]], cap: int, cloud: CloudView) -> int:
    """New nodes of this flavor for the jobs, first-fit over the nodes already opened, biggest jobs first;
    no more than ``cap``."""
    nodes = 0
    opened: list[Slot] = []
    for wc, n in sorted(classes, key=lambda x: (-x[0].cores, -(x[0].memory_mb or 0))):
        n = fill(opened, wc, n, cloud)
        per_vm = jobs_per_vm(fl, wc)
        while n > 0 and nodes < cap:
            took = min(per_vm, n)
            nodes += 1
            n -= took
            left_cores = fl.cores - took * wc.cores
            if left_cores > 0:  # of the group's image, which all its classes share
                opened.append(Slot(left_cores, fl.memory_mb - took * (wc.memory_mb or 0), image_of(cloud, wc) or ""))
        if nodes >= cap:
            break
    return nodes

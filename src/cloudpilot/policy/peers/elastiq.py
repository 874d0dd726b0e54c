"""elastiq: start VMs when the batch queue has stayed above a threshold for a while, stop VMs idle for an hour.

Source: github.com/dberzano/elastiq at aba5b0fcbea3a5b7adbed70f7f01601a62651989 (2018-04-11, v1.0.4),
pylib/elastiq/__init__.py (defaults in ``cf``; ``check_queue``, ``check_vms``, ``ec2_scale_up``,
``check_owned_instance``, ``check_vm_errors``, ``change_vms_allegedly_running``); etc/elastiq.conf is a sample
configuration (threshold 10, time 100 s).
- Main loop every ``sleep_s`` 5 s, running the events that are due: ``check_queue`` every 15 s, ``check_vms``
  every 45 s, ``check_vm_errors`` every 20 s.
- ``check_queue``: waiting = idle jobs - ``vms_allegedly_running`` x ``n_jobs_per_vm`` (4). When waiting >=
  ``waiting_jobs_threshold`` (0): the first time, remember the time; once more than ``waiting_jobs_time_s``
  (40 s) have passed since, ask for ceil(waiting / ``n_jobs_per_vm``) VMs and forget the time. Below the
  threshold, forget it.
- ``ec2_scale_up``: at most quota ``max_vms`` - instances - ``vms_allegedly_running`` VMs (the VMs just started
  are counted twice, as in the source). Each started VM is "allegedly running" for
  ``estimated_vm_deploy_time_s`` (600 s); if by then it has not joined the batch system it is terminated.
- ``check_vms``: a VM with no job whose status is unchanged for more than ``idle_for_time_s`` (3600 s) is shut
  down, keeping quota ``min_vms`` (0); each shut-down VM is one less "allegedly running".
- ``check_vm_errors``: a VM in error is terminated and replaced by a new one (one less, one more "allegedly
  running").

Mapping onto cloudpilot's snapshot
- The queue is every waiting job of every class; the VMs elastiq asks for are shared out among the classes,
  most waiting jobs first, ceil(waiting / ``n_jobs_per_vm``) each, and placed on the clouds that suit the class,
  cheapest first (elastiq has one EC2 endpoint: cloudpilot's clouds stand for it, each with its own quota). The
  flavor is the one that takes ``n_jobs_per_vm`` jobs of the class with the least waste (elastiq has one
  ``flavour``, chosen to hold ``n_jobs_per_vm`` jobs).
- A VM "joins the batch system" when its pilot registers (running); "in error" is the ``failed`` state.
- Quotas: the cloud's ``max_vms``/cores/memory and start rate, less the VMs allegedly running on it.
- The sample configuration's values can be passed to the constructor; the defaults are the code's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cloudpilot.domain.provisioning import Action, ProvisioningSnapshot, StartVMs, StopVM
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.policy.budget import Budget, suits
from cloudpilot.policy.peers._common import Every, budgets, flavor, image_of, startable
from cloudpilot.policy.provisioning import best_flavor


@dataclass
class _Alleged:
    cloud: str
    count: int
    until: float  # started + estimated_vm_deploy_time_s


class ElastiqPolicy:
    name = "elastiq"

    def __init__(
        self,
        waiting_jobs_threshold: int = 0,
        waiting_jobs_time_s: float = 40.0,
        n_jobs_per_vm: int = 4,
        idle_for_time_s: float = 3600.0,
        estimated_vm_deploy_time_s: float = 600.0,
        check_queue_every_s: float = 15.0,
        check_vms_every_s: float = 45.0,
        check_vms_in_error_every_s: float = 20.0,
        min_vms: int = 0,
    ) -> None:
        self.waiting_jobs_threshold = waiting_jobs_threshold
        self.waiting_jobs_time_s = waiting_jobs_time_s
        self.n_jobs_per_vm = n_jobs_per_vm
        self.idle_for_time_s = idle_for_time_s
        self.estimated_vm_deploy_time_s = estimated_vm_deploy_time_s
        self.min_vms = min_vms
        self._queue = Every(check_queue_every_s)
        self._vms = Every(check_vms_every_s)
        self._errors = Every(check_vms_in_error_every_s)
        self.first_seen_above_threshold: float | None = None
        self._alleged: list[_Alleged] = []
        self._terminated: set[str] = set()  # not joined in time: terminated once
        self._replaced: set[str] = set()  # in error: replaced once

    @property
    def vms_allegedly_running(self) -> int:
        return sum(a.count for a in self._alleged)

    def decide(self, snapshot: ProvisioningSnapshot, now: float) -> list[Action]:
        self._alleged = [a for a in self._alleged if a.until > now]  # the delayed "-delta" events
        left = budgets(snapshot)
        actions: list[Action] = []
        actions.extend(self._check_owned_instances(snapshot, now))
        if self._errors.due(now):
            actions.extend(self._check_vm_errors(snapshot, left, now))
        if self._vms.due(now):
            actions.extend(self._check_vms(snapshot, now))
        if self._queue.due(now):
            actions.extend(self._check_queue(snapshot, left, now))
        return actions

    # --- events --------------------------------------------------------------------------------------------

    def _check_owned_instances(self, snapshot: ProvisioningSnapshot, now: float) -> list[StopVM]:
        stops = []
        for cloud in snapshot.clouds:
            for vm in cloud.vms:
                late = now - vm.created_at >= self.estimated_vm_deploy_time_s
                if vm.state is VMState.BOOTING and vm.id not in self._terminated and late:
                    self._terminated.add(vm.id)
                    limit = self.estimated_vm_deploy_time_s
                    stops.append(StopVM(vm.id, f"elastiq: not joined after {limit:.0f} s"))
        return stops

    def _check_vm_errors(self, snapshot: ProvisioningSnapshot, left: dict[str, Budget], now: float) -> list[StartVMs]:
        starts = []
        alleged = self._alleged_per_cloud()
        for cloud in snapshot.clouds:
            for vm in cloud.vms:
                if vm.state is not VMState.FAILED or vm.id in self._replaced:
                    continue
                self._replaced.add(vm.id)
                self._forget(1)
                fl = flavor(cloud, vm.flavor)
                no_image = cloud.vos is not None and vm.vo not in cloud.vos  # the cloud no longer serves it
                if fl is None or no_image or cloud.shutdown_pending:
                    continue
                if self._room(left[cloud.name], fl, vm.vo, alleged.get(cloud.name, 0)) < 1:
                    continue
                left[cloud.name].take(fl, vm.vo, 1)
                self._alleged.append(_Alleged(cloud.name, 1, now + self.estimated_vm_deploy_time_s))
                reason = f"elastiq: replaces {vm.id} in error"
                starts.append(StartVMs(cloud.name, vm.vo, fl.name, 1, reason, vm.image))
        return starts

    def _check_vms(self, snapshot: ProvisioningSnapshot, now: float) -> list[StopVM]:
        joined = [vm for c in snapshot.clouds for vm in c.vms if vm.state is VMState.RUNNING]
        idle = [vm for vm in joined if vm.idle_since is not None and now - vm.idle_since > self.idle_for_time_s]
        idle = sorted(idle, key=lambda vm: (vm.idle_since, vm.id))[: max(0, len(joined) - self.min_vms)]
        self._forget(len(idle))
        return [StopVM(vm.id, f"elastiq: idle for {now - (vm.idle_since or now):.0f} s") for vm in idle]

    def _check_queue(self, snapshot: ProvisioningSnapshot, left: dict[str, Budget], now: float) -> list[StartVMs]:
        waiting = sum(wc.waiting for wc in snapshot.work) - self.vms_allegedly_running * self.n_jobs_per_vm
        if waiting < self.waiting_jobs_threshold:
            self.first_seen_above_threshold = None
            return []
        if self.first_seen_above_threshold is None:
            self.first_seen_above_threshold = now
            return []
        if now - self.first_seen_above_threshold <= self.waiting_jobs_time_s:
            return []
        self.first_seen_above_threshold = None
        return self._scale_up(snapshot, left, math.ceil(waiting / self.n_jobs_per_vm), waiting, now)

    # --- scale-up ------------------------------------------------------------------------------------------

    def _scale_up(
        self, snapshot: ProvisioningSnapshot, left: dict[str, Budget], nvms: int, waiting: int, now: float
    ) -> list[StartVMs]:
        clouds = startable(snapshot)
        alleged = self._alleged_per_cloud()  # as ec2_scale_up reads it, once per call
        starts: dict[tuple[str, str, str, str], int] = {}  # (cloud, VO, flavor, image or "") -> VMs
        classes = sorted((wc for wc in snapshot.work if wc.waiting > 0), key=lambda wc: (-wc.waiting, wc.vo))
        for wc in classes:
            want = min(nvms, math.ceil(wc.waiting / self.n_jobs_per_vm))
            for cloud in clouds:
                if want <= 0:
                    break
                if not suits(cloud, wc):
                    continue
                choice = best_flavor(cloud.flavors, wc, self.n_jobs_per_vm)
                if choice is None:
                    continue
                fl = choice[0]
                n = min(want, self._room(left[cloud.name], fl, wc.vo, alleged.get(cloud.name, 0)))
                if n <= 0:
                    continue
                left[cloud.name].take(fl, wc.vo, n)
                self._alleged.append(_Alleged(cloud.name, n, now + self.estimated_vm_deploy_time_s))
                key = (cloud.name, wc.vo, fl.name, image_of(cloud, wc) or "")
                starts[key] = starts.get(key, 0) + n
                want -= n
                nvms -= n
            if nvms <= 0:
                break
        return [
            StartVMs(
                c, vo, f, n, f"elastiq: {waiting} waiting job(s) above the threshold for long enough", image or None
            )
            for (c, vo, f, image), n in sorted(starts.items())
        ]

    def _alleged_per_cloud(self) -> dict[str, int]:
        per: dict[str, int] = {}
        for a in self._alleged:
            per[a.cloud] = per.get(a.cloud, 0) + a.count
        return per

    @staticmethod
    def _room(budget: Budget, fl: Flavor, vo: str, alleged: int) -> int:
        # ec2_scale_up: max_vms - instances - allegedly running (VMs started earlier count twice, as there).
        return max(0, min(budget.vms_allowed(fl, vo), int(budget.vms) - alleged))

    def _forget(self, n: int) -> None:
        """``change_vms_allegedly_running(-n)``: the oldest entries first, never below zero."""
        for entry in self._alleged:
            if n <= 0:
                break
            took = min(entry.count, n)
            entry.count -= took
            n -= took
        self._alleged = [a for a in self._alleged if a.count > 0]

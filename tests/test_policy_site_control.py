"""Site control in the provisioning policy: shutdowns, capacity shrink, pledges (caps and reclaim), vacuum clouds."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudpilot.domain.provisioning import (
    Action,
    CloudMode,
    CloudView,
    DrainVM,
    ProvisioningKnobs,
    ProvisioningSnapshot,
    StartVMs,
    StopVM,
    VMEnd,
    VMView,
    WorkClass,
)
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.policy.provisioning import decide
from cloudpilot.policy.vacuum import Speed, is_abort, is_good, vo_states

NOW = 100_000.0
KNOBS = ProvisioningKnobs()
SMALL, LARGE = Flavor("small", 1, 2048), Flavor("large", 4, 8192)


def work(vo: str, waiting: int = 10, cores: int = 1, wall: int = 3600, **kw: object) -> WorkClass:
    fields = dict(memory_mb=None, tags=frozenset(), sites_allow=frozenset(), sites_deny=frozenset())
    fields.update(kw)
    return WorkClass(vo=vo, cores=cores, wall_seconds=wall, waiting=waiting, **fields)  # type: ignore[arg-type]


def cloud(name: str = "c1", **kw: object) -> CloudView:
    fields: dict[str, object] = dict(flavors=(SMALL,), vos=None, max_vms=100, start_rate_per_minute=100)
    fields.update(kw)
    return CloudView(name=name, **fields)  # type: ignore[arg-type]


def vm(id: str, vo: str, *, busy: bool = True, cores: int = 1, created: float = 0.0,
       state: VMState = VMState.RUNNING, jobs_run: int = 0) -> VMView:  # fmt: skip
    return VMView(id, vo, "small" if cores == 1 else "large", state, cores, 2048 * cores, 0 if busy else cores,
                  None if busy else NOW - 10, created_at=created, jobs_run=jobs_run)  # fmt: skip


def starts(actions: list[Action]) -> dict[tuple[str, str, str], int]:
    return {(a.cloud, a.vo, a.flavor): a.count for a in actions if isinstance(a, StartVMs)}


def drained(actions: list[Action]) -> list[str]:
    return [a.vm_id for a in actions if isinstance(a, DrainVM)]


# --- scheduled shutdown ---------------------------------------------------------------------------------


def test_a_cloud_with_a_pending_shutdown_starts_nothing() -> None:
    pending = cloud("pending", shutdown_pending=True)
    vac = cloud("vac", mode=CloudMode.VACUUM, shutdown_pending=True, target_shares={"lhcb": 1})
    snap = ProvisioningSnapshot(work=(work("lhcb"),), clouds=(pending, vac))
    assert starts(decide(snap, KNOBS, NOW)) == {}
    # the work goes to a cloud without one, even a dearer one
    other = cloud("other", price_per_core_hour=1.0)
    snap = ProvisioningSnapshot(work=(work("lhcb", waiting=3),), clouds=(pending, other))
    assert starts(decide(snap, KNOBS, NOW)) == {("other", "lhcb", "small"): 3}


# --- capacity shrink ------------------------------------------------------------------------------------


def test_capacity_shrink_drains_the_excess_idle_ones_first_then_the_youngest() -> None:
    vms = (
        vm("busy-old", "lhcb", created=1),
        vm("idle-old", "lhcb", busy=False, created=2),
        vm("busy-mid", "lhcb", created=3),
        vm("busy-young", "lhcb", created=5),
        vm("busy-4", "lhcb", created=4),
        vm("leaving", "lhcb", state=VMState.DRAINING, created=9),  # already going: not counted
    )
    snap = ProvisioningSnapshot(work=(), clouds=(cloud(max_vms=2, vms=vms),))
    actions = decide(snap, KNOBS, NOW)
    assert drained(actions) == ["idle-old", "busy-young", "busy-4"]
    assert all("capacity" in a.reason and "2 VM" in a.reason for a in actions if isinstance(a, DrainVM))
    assert starts(actions) == {}


def test_no_drain_within_capacity_and_drained_vms_are_no_supply() -> None:
    vms = (vm("a", "lhcb", busy=False, created=1), vm("b", "lhcb", created=2))
    assert drained(decide(ProvisioningSnapshot((), (cloud(max_vms=2, vms=vms),)), KNOBS, NOW)) == []
    # max_vms 1: the idle VM is drained, so the waiting job it would have run needs a VM elsewhere
    shrunk = cloud("shrunk", max_vms=1, vms=vms)
    spare = cloud("spare", price_per_core_hour=1.0)
    actions = decide(ProvisioningSnapshot((work("lhcb", waiting=1),), (shrunk, spare)), KNOBS, NOW)
    assert drained(actions) == ["a"]
    assert starts(actions) == {("spare", "lhcb", "small"): 1}


def test_an_idle_stop_counts_against_the_excess() -> None:
    stale = VMView("stale", "lhcb", "small", VMState.RUNNING, 1, 2048, 1, NOW - 1000, created_at=1)
    vms = (stale, vm("b", "lhcb", created=2), vm("c", "lhcb", created=3))
    actions = decide(ProvisioningSnapshot((), (cloud(max_vms=1, vms=vms),)), KNOBS, NOW)
    assert [a.vm_id for a in actions if isinstance(a, StopVM)] == ["stale"]
    assert drained(actions) == ["c"]


# --- pledges --------------------------------------------------------------------------------------------

# atlas sorts before lhcb, so with equal usage atlas is served first and could take the whole site.
PLEDGES = {"SITE": {"lhcb": 4, "atlas": 6}}


def test_pledges_keep_one_vo_from_starving_the_other() -> None:
    site = cloud(site="SITE", max_vms=10)
    snap = ProvisioningSnapshot(
        work=(work("atlas", waiting=50), work("lhcb", waiting=50)),
        clouds=(site,),
        vo_shares={"atlas": 9, "lhcb": 1},
        pledges=PLEDGES,
    )
    # pledges, not the shares (9:1), split the site while both wait
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "atlas", "small"): 6, ("c1", "lhcb", "small"): 4}
    without = ProvisioningSnapshot(snap.work, snap.clouds, vo_shares={"atlas": 9, "lhcb": 1})
    assert starts(decide(without, KNOBS, NOW)) == {("c1", "atlas", "small"): 9, ("c1", "lhcb", "small"): 1}


def test_a_vo_above_its_pledge_may_not_grow_while_another_waits_below_its_own() -> None:
    held = tuple(vm(f"a{i}", "atlas") for i in range(8))  # atlas holds 8 > its pledge of 6
    site = cloud(site="SITE", max_vms=20, vms=held)
    snap = ProvisioningSnapshot((work("atlas", waiting=50), work("lhcb", waiting=50)), (site,), pledges=PLEDGES)
    # lhcb, alone below its pledge, may go beyond it (opportunistic); atlas gets nothing
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "lhcb", "small"): 12}


def test_the_pledge_cap_holds_over_all_the_clouds_of_the_site() -> None:
    one, two = cloud("one", site="SITE", max_vms=4), cloud("two", site="SITE", max_vms=10, price_per_core_hour=1)
    elsewhere = cloud("elsewhere", site="OTHER", max_vms=10, price_per_core_hour=2, vos=frozenset({"atlas"}))
    snap = ProvisioningSnapshot(
        (work("atlas", waiting=30), work("lhcb", waiting=2)), (one, two, elsewhere), pledges=PLEDGES
    )
    assert starts(decide(snap, KNOBS, NOW)) == {
        ("one", "atlas", "small"): 4,
        ("two", "atlas", "small"): 2,  # 6 at SITE: its pledge
        ("elsewhere", "atlas", "small"): 10,  # no pledges at OTHER
        ("two", "lhcb", "small"): 2,
    }


def test_a_vo_goes_above_its_pledge_when_nobody_else_waits() -> None:
    site = cloud(site="SITE", max_vms=10)
    snap = ProvisioningSnapshot((work("atlas", waiting=50), work("lhcb", waiting=0)), (site,), pledges=PLEDGES)
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "atlas", "small"): 10}
    # lhcb "waits" for one job that its own free slot will run: it needs nothing, atlas is not capped
    free = VMView("l0", "lhcb", "small", VMState.BOOTING, 1, 2048, 1, None)
    snap = ProvisioningSnapshot(
        (work("atlas", waiting=50), work("lhcb", waiting=1)), (cloud(site="SITE", max_vms=10, vms=(free,)),),
        pledges=PLEDGES,
    )  # fmt: skip
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "atlas", "small"): 9}
    # lhcb's work cannot run at the site (denied): it does not cap atlas there either
    snap = ProvisioningSnapshot(
        (work("atlas", waiting=50), work("lhcb", waiting=50, sites_deny=frozenset({"SITE"}))), (site,),
        pledges=PLEDGES,
    )  # fmt: skip
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "atlas", "small"): 10}


def test_a_vo_without_a_pledge_at_a_pledged_site_is_only_opportunistic() -> None:
    site = cloud(site="SITE", max_vms=20)
    snap = ProvisioningSnapshot((work("cms", waiting=50), work("lhcb", waiting=3)), (site,), pledges=PLEDGES)
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "lhcb", "small"): 3}
    snap = ProvisioningSnapshot((work("cms", waiting=50),), (site,), pledges=PLEDGES)
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "cms", "small"): 20}


def full_site(*extra: VMView, max_vms: int = 10) -> CloudView:
    """SITE full of atlas: 2 idle VMs (oldest), 8 busy ones, created 1..10 (a9 the youngest busy)."""
    vms = tuple(vm(f"a{i}", "atlas", busy=i >= 2, created=i) for i in range(10)) + extra
    return cloud(site="SITE", max_vms=max_vms, vms=vms)


def test_reclaim_drains_idle_then_youngest_only_as_far_as_needed() -> None:
    snap = ProvisioningSnapshot((work("lhcb", waiting=3),), (full_site(),), pledges=PLEDGES)
    actions = decide(snap, KNOBS, NOW)
    # lhcb lacks min(4 - 0, 3) = 3 cores: the two idle VMs (youngest first), then the youngest busy one
    assert drained(actions) == ["a1", "a0", "a9"]
    assert all("pledge" in a.reason and "lhcb" in a.reason for a in actions if isinstance(a, DrainVM))
    assert starts(actions) == {}
    # more waiting: no more than the pledge (4 cores)
    snap = ProvisioningSnapshot((work("lhcb", waiting=50),), (full_site(),), pledges=PLEDGES)
    assert drained(decide(snap, KNOBS, NOW)) == ["a1", "a0", "a9", "a8"]


def test_reclaim_never_takes_a_vo_below_its_pledge() -> None:
    pledges = {"SITE": {"lhcb": 4, "atlas": 9}}
    snap = ProvisioningSnapshot((work("lhcb", waiting=50),), (full_site(),), pledges=pledges)
    assert drained(decide(snap, KNOBS, NOW)) == ["a1"]  # atlas 10 -> 9, its pledge
    pledges = {"SITE": {"lhcb": 4, "atlas": 10}}
    snap = ProvisioningSnapshot((work("lhcb", waiting=50),), (full_site(),), pledges=pledges)
    assert drained(decide(snap, KNOBS, NOW)) == []


def test_reclaim_is_not_repeated_while_the_drained_vms_leave_and_not_needed_with_room() -> None:
    leaving = {"a1", "a0", "a9"}
    site = full_site()
    site = cloud(site="SITE", max_vms=10, vms=tuple(
        VMView(v.id, v.vo, v.flavor, VMState.DRAINING if v.id in leaving else v.state, v.cores, v.memory_mb,
               v.free_cores, v.idle_since, created_at=v.created_at) for v in site.vms))  # fmt: skip
    snap = ProvisioningSnapshot((work("lhcb", waiting=3),), (site,), pledges=PLEDGES)
    assert decide(snap, KNOBS, NOW) == []  # the quota frees as they go; then lhcb gets its VMs
    # room for lhcb: VMs, no drain
    snap = ProvisioningSnapshot((work("lhcb", waiting=3),), (full_site(max_vms=12),), pledges=PLEDGES)
    actions = decide(snap, KNOBS, NOW)
    assert drained(actions) == ["a1"] and starts(actions) == {("c1", "lhcb", "small"): 2}


def test_reclaim_takes_from_vos_above_their_pledge_only_and_not_for_too_little_work() -> None:
    cms = tuple(vm(f"cms{i}", "cms", created=100 + i) for i in range(2))  # no pledge: above it (0)
    site = cloud(site="SITE", max_vms=8, vms=tuple(vm(f"a{i}", "atlas", created=i) for i in range(6)) + cms)
    snap = ProvisioningSnapshot((work("lhcb", waiting=3),), (site,), pledges=PLEDGES)
    assert drained(decide(snap, KNOBS, NOW)) == ["cms1", "cms0"]  # atlas is at its pledge (6)
    short = ProvisioningSnapshot((work("lhcb", waiting=3, wall=60),), (site,), pledges=PLEDGES)
    assert drained(decide(short, KNOBS, NOW)) == []  # 180 s of work would not start a VM


# --- vacuum clouds --------------------------------------------------------------------------------------


def vac(**kw: object) -> CloudView:
    fields: dict[str, object] = dict(mode=CloudMode.VACUUM, flavors=(SMALL, LARGE), max_vms=4, hs06_per_core=10.0)
    fields.update(kw)
    return cloud("vac", **fields)


def end(vo: str, ended: float, code: int | None, *, life: float = 5000, jobs: int = 0) -> VMEnd:
    return VMEnd(vo, ended - life, ended, code, jobs)


def vac_starts(actions: list[Action]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for a in actions:
        if isinstance(a, StartVMs):
            assert a.cloud == "vac" and a.reason.startswith("vacuum: ")
            counts[a.vo] += a.count
    return dict(counts)


def test_vacuum_fills_by_target_share_with_the_biggest_flavor_ignoring_the_queue() -> None:
    snap = ProvisioningSnapshot((), (vac(target_shares={"lhcb": 3, "atlas": 1}),))
    actions = decide(snap, KNOBS, NOW)
    assert starts(actions) == {("vac", "lhcb", "large"): 3, ("vac", "atlas", "large"): 1}
    # waiting work does not start VMs there (demand path); the vacuum ones are the same
    busy = ProvisioningSnapshot((work("cms", waiting=100),), snap.clouds)
    assert starts(decide(busy, KNOBS, NOW)) == starts(actions)


def test_vacuum_picks_the_vo_furthest_below_its_target_by_hs06() -> None:
    # lhcb: 1 large VM = 40 HS06; atlas: 2 small VMs = 20 HS06; equal targets: atlas is further below
    held = (vm("l", "lhcb", cores=4), vm("a1", "atlas"), vm("a2", "atlas"))
    snap = ProvisioningSnapshot((), (vac(vms=held, target_shares={"lhcb": 1, "atlas": 1}),))
    actions = decide(snap, KNOBS, NOW)
    assert vac_starts(actions) == {"atlas": 1}
    # the last cores left (quota of 8) take the biggest flavor that still fits
    snap = ProvisioningSnapshot((), (vac(vms=held, max_vms=10, max_cores=8, target_shares={"lhcb": 1, "atlas": 1}),))
    assert starts(decide(snap, KNOBS, NOW)) == {("vac", "atlas", "small"): 2}


def test_vacuum_targets_default_to_the_vo_shares_of_the_vos_it_serves() -> None:
    snap = ProvisioningSnapshot((), (vac(vos=frozenset({"lhcb", "cms"})),), vo_shares={"lhcb": 1, "atlas": 5})
    assert vac_starts(decide(snap, KNOBS, NOW)) == {"lhcb": 2, "cms": 2}  # cms: the default share, 1
    assert vac_starts(decide(ProvisioningSnapshot((), (vac(),), vo_shares={"atlas": 1}), KNOBS, NOW)) == {"atlas": 4}
    assert decide(ProvisioningSnapshot((), (vac(),)), KNOBS, NOW) == []  # no targets at all


def test_vacuum_respects_quota_rate_and_boot_failure_back_off_and_never_idle_stops() -> None:
    idle = VMView("idle", "lhcb", "small", VMState.RUNNING, 1, 2048, 1, NOW - 10_000)
    snap = ProvisioningSnapshot((), (vac(vms=(idle,), start_rate_per_minute=2, target_shares={"lhcb": 1}),))
    actions = decide(snap, KNOBS, NOW)
    assert vac_starts(actions) == {"lhcb": 2} and not any(isinstance(a, StopVM) for a in actions)
    failing = vac(boot_failures_in_row=1, last_boot_failure_at=NOW - 10, target_shares={"lhcb": 1})
    assert decide(ProvisioningSnapshot((), (failing,)), KNOBS, NOW) == []


def test_vacuum_free_slots_absorb_waiting_work() -> None:
    free = VMView("v", "lhcb", "large", VMState.RUNNING, 4, 8192, 4, None)
    snap = ProvisioningSnapshot((work("lhcb", waiting=4),), (vac(vms=(free,), max_vms=1), cloud("demand")))
    assert starts(decide(snap, KNOBS, NOW)) == {}


def test_abort_and_good_ends() -> None:
    assert is_abort(end("x", NOW, 300), 600) and is_abort(end("x", NOW, 699, jobs=3), 600)
    assert is_abort(end("x", NOW, None, life=100), 600)  # fizzle
    assert not is_abort(end("x", NOW, None, life=100, jobs=1), 600)  # it ran a job: no fizzle
    assert not is_abort(end("x", NOW, None, life=700), 600) and not is_abort(end("x", NOW, 200), 600)
    assert is_good(end("x", NOW, 100), 600) and is_good(end("x", NOW, 200), 600)
    assert is_good(end("x", NOW, None, life=100, jobs=2), 600)
    assert not is_good(end("x", NOW, None, life=700), 600) and not is_good(end("x", NOW, 300, jobs=2), 600)


def test_vacuum_backs_a_vo_off_after_an_abort_code() -> None:
    c = vac(target_shares={"lhcb": 1, "atlas": 1}, recent_ends=(end("lhcb", NOW - 100, 300),))
    assert vo_states(c, NOW)["lhcb"].speed is Speed.PAUSED
    assert vac_starts(decide(ProvisioningSnapshot((), (c,)), KNOBS, NOW)) == {"atlas": 4}


def test_vacuum_backs_a_vo_off_after_a_fizzle_without_code() -> None:
    ends = (end("lhcb", NOW - 5000, 200), end("lhcb", NOW - 100, None, life=60))  # the good end is older
    c = vac(target_shares={"lhcb": 1, "atlas": 1}, recent_ends=ends)
    assert vac_starts(decide(ProvisioningSnapshot((), (c,)), KNOBS, NOW)) == {"atlas": 4}
    long_lived = vac(target_shares={"lhcb": 1, "atlas": 1}, recent_ends=(end("lhcb", NOW - 100, None, life=700),))
    assert vac_starts(decide(ProvisioningSnapshot((), (long_lived,)), KNOBS, NOW)) == {"lhcb": 2, "atlas": 2}


def test_vacuum_probes_exactly_one_vm_after_the_back_off() -> None:
    abort_at = NOW - 700  # backoff_seconds 600: over
    c = vac(target_shares={"lhcb": 1, "atlas": 1}, recent_ends=(end("lhcb", abort_at, 500),))
    actions = decide(ProvisioningSnapshot((), (c,)), KNOBS, NOW)
    assert vac_starts(actions) == {"lhcb": 1, "atlas": 3}
    probe = next(a for a in actions if isinstance(a, StartVMs) and a.vo == "lhcb")
    assert "probe" in probe.reason
    # while the probe is alive (and has run nothing) no second one
    alive = vm("p", "lhcb", cores=4, created=abort_at + 50, state=VMState.BOOTING)
    c2 = vac(target_shares={"lhcb": 1, "atlas": 1}, recent_ends=c.recent_ends, vms=(alive,))
    assert vac_starts(decide(ProvisioningSnapshot((), (c2,)), KNOBS, NOW)) == {"atlas": 3}
    # a VM from before the abort is no probe
    old = vm("o", "lhcb", cores=4, created=abort_at - 5000)
    c3 = vac(target_shares={"lhcb": 1, "atlas": 1}, recent_ends=c.recent_ends, vms=(old,))
    assert vac_starts(decide(ProvisioningSnapshot((), (c3,)), KNOBS, NOW)) == {"lhcb": 1, "atlas": 2}


def test_vacuum_returns_to_full_speed_after_a_good_end() -> None:
    abort_at = NOW - 700
    ends = (end("lhcb", abort_at, 300), end("lhcb", NOW - 10, 200, life=600))
    c = vac(target_shares={"lhcb": 1, "atlas": 1}, recent_ends=ends)
    assert vo_states(c, NOW)["lhcb"].speed is Speed.FULL
    assert vac_starts(decide(ProvisioningSnapshot((), (c,)), KNOBS, NOW)) == {"lhcb": 2, "atlas": 2}
    # the probe running a job counts as well
    running = vm("p", "lhcb", cores=4, created=abort_at + 50, jobs_run=1)
    c = vac(target_shares={"lhcb": 1, "atlas": 1}, recent_ends=ends[:1], vms=(running,), max_vms=5)
    assert vo_states(c, NOW)["lhcb"].speed is Speed.FULL
    assert vac_starts(decide(ProvisioningSnapshot((), (c,)), KNOBS, NOW)) == {"atlas": 3, "lhcb": 1}
    # a new abort after the good end pauses it again
    ends = (*ends, end("lhcb", NOW - 5, 400))
    c = vac(target_shares={"lhcb": 1, "atlas": 1}, recent_ends=ends)
    assert vac_starts(decide(ProvisioningSnapshot((), (c,)), KNOBS, NOW)) == {"atlas": 4}


# --- properties -----------------------------------------------------------------------------------------

VOS = ["lhcb", "atlas", "cms"]
FLAVORS = (Flavor("f1", 1, 2048), Flavor("f2", 2, 4096), Flavor("f4", 4, 8192))


@st.composite
def site_snapshots(draw: st.DrawFn, allow_shrink: bool = True) -> ProvisioningSnapshot:
    clouds = []
    for k in range(draw(st.integers(1, 4))):
        flavors = tuple(draw(st.lists(st.sampled_from(FLAVORS), min_size=1, max_size=3, unique=True)))
        vms = []
        for i in range(draw(st.integers(0, 8))):
            f = draw(st.sampled_from(flavors))
            busy = draw(st.booleans())
            vms.append(VMView(
                f"vm{k}-{i}", draw(st.sampled_from(VOS)), f.name,
                draw(st.sampled_from([VMState.RUNNING] * 4 + [VMState.BOOTING, VMState.DRAINING, VMState.HALTED])),
                f.cores, f.memory_mb, 0 if busy else f.cores, None if busy else NOW - 10,
                created_at=draw(st.integers(0, 1000)), jobs_run=draw(st.integers(0, 2)),
            ))  # fmt: skip
        alive = sum(1 for v in vms if v.state in (VMState.RUNNING, VMState.BOOTING))
        max_vms = draw(st.integers(0, 12) if allow_shrink else st.integers(alive, alive + 3))
        ends = tuple(
            VMEnd(draw(st.sampled_from(VOS)), t - draw(st.integers(0, 2000)), t,
                  draw(st.none() | st.sampled_from([100, 200, 300, 400, 500])), draw(st.integers(0, 1)))
            for t in draw(st.lists(st.integers(int(NOW) - 3000, int(NOW)), max_size=4))
        )  # fmt: skip
        clouds.append(CloudView(
            name=f"c{k}", flavors=flavors, vos=draw(st.none() | st.just(frozenset({"lhcb", "atlas"}))),
            max_vms=max_vms, max_cores=draw(st.none() | st.integers(0, 40)),
            start_rate_per_minute=draw(st.integers(0, 10)), starts_last_minute=draw(st.integers(0, 3)),
            site=draw(st.sampled_from(["S1", "S2", None])), mode=draw(st.sampled_from(list(CloudMode))),
            shutdown_pending=draw(st.booleans()), vms=tuple(vms), recent_ends=ends,
            target_shares=draw(st.none() | st.just({"lhcb": 2.0, "cms": 1.0})),
        ))  # fmt: skip
    classes = tuple(
        work(draw(st.sampled_from(VOS)), waiting=draw(st.integers(0, 30)), cores=draw(st.sampled_from([1, 2, 4])))
        for _ in range(draw(st.integers(0, 4)))
    )
    pledge = st.dictionaries(st.sampled_from(VOS), st.integers(0, 12), max_size=3)
    return ProvisioningSnapshot(
        classes, tuple(clouds), vo_shares={"lhcb": 1, "atlas": 2}, pledges=draw(st.fixed_dictionaries({"S1": pledge}))
    )


def live(c: CloudView) -> list[VMView]:
    return [v for v in c.vms if v.state in (VMState.RUNNING, VMState.BOOTING, VMState.REQUESTED)]


@settings(max_examples=300, deadline=None)
@given(site_snapshots())
def test_never_beyond_quota_or_rate_and_never_on_a_cloud_being_shut_down(snap: ProvisioningSnapshot) -> None:
    actions = decide(snap, KNOBS, NOW)
    assert actions == decide(snap, KNOBS, NOW)
    ids = [a.vm_id for a in actions if isinstance(a, DrainVM | StopVM)]
    assert len(ids) == len(set(ids))  # each VM once
    for c in snap.clouds:
        flavor = {f.name: f for f in c.flavors}
        new = [(flavor[a.flavor], a.count) for a in actions if isinstance(a, StartVMs) and a.cloud == c.name]
        count = sum(n for _, n in new)
        if count == 0:
            continue
        assert not c.shutdown_pending
        held = [v for v in c.vms if v.state is not VMState.DESTROYED]
        assert len(held) + count <= c.max_vms
        assert count <= c.start_rate_per_minute - c.starts_last_minute
        if c.max_cores is not None:
            assert sum(v.cores for v in held) + sum(f.cores * n for f, n in new) <= c.max_cores
        vacuum = c.mode is CloudMode.VACUUM
        assert all(
            a.reason.startswith("vacuum: ") == vacuum for a in actions if isinstance(a, StartVMs) and a.cloud == c.name
        )
        if vacuum:
            states = vo_states(c, NOW)
            for vo in {a.vo for a in actions if isinstance(a, StartVMs) and a.cloud == c.name}:
                n = sum(a.count for a in actions if isinstance(a, StartVMs) and a.cloud == c.name and a.vo == vo)
                if vo in states and states[vo].speed is Speed.PAUSED:
                    raise AssertionError(f"{vo} started while paused")
                if vo in states and states[vo].speed is Speed.PROBE:
                    assert n == 1 and not states[vo].probe_alive


@settings(max_examples=300, deadline=None)
@given(site_snapshots())
def test_capacity_drains_bring_every_cloud_back_within_max_vms(snap: ProvisioningSnapshot) -> None:
    actions = decide(snap, KNOBS, NOW)
    gone = {a.vm_id for a in actions if isinstance(a, DrainVM | StopVM)}
    for c in snap.clouds:
        remaining = [v for v in live(c) if v.id not in gone]
        assert len(remaining) <= max(0, c.max_vms)  # no requested VMs are generated: all drainable
        if len(live(c)) <= c.max_vms:  # nothing drained for capacity where it fits
            assert not any("capacity" in a.reason for a in actions if isinstance(a, DrainVM) and a.vm_id in
                           {v.id for v in c.vms})  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(site_snapshots(allow_shrink=False))
def test_pledges_never_drain_below_pledge_nor_let_others_grow_past_theirs(snap: ProvisioningSnapshot) -> None:
    actions = decide(snap, KNOBS, NOW)
    pledges = snap.pledges["S1"]
    at_site = [c for c in snap.clouds if c.site == "S1"]
    stopped = {a.vm_id for a in actions if isinstance(a, StopVM)}
    held: dict[str, int] = defaultdict(int)
    for c in at_site:
        for v in live(c):
            if v.id not in stopped:
                held[v.vo] += v.cores
    drains = [a.vm_id for a in actions if isinstance(a, DrainVM)]
    if not any(pledges.values()):
        assert drains == []
    after = dict(held)
    for c in snap.clouds:
        for v in c.vms:
            if v.id in drains:
                assert c.site == "S1"
                assert held[v.vo] > pledges.get(v.vo, 0)  # only VOs above their pledge
                after[v.vo] -= v.cores
    for vo, cores in after.items():
        if cores < held[vo]:
            assert cores >= pledges.get(vo, 0)  # and never below it
    # growth: with a pledged VO waiting below its pledge (no free slots anywhere, so "waiting" is plain),
    # no other VO ends above max(held, pledge) at the site.
    starting = [c for c in at_site if c.mode is CloudMode.DEMAND and not c.shutdown_pending]
    if any(v.free_cores for c in snap.clouds for v in live(c)):
        return

    def waits(vo: str) -> bool:
        return any(
            w.vo == vo
            and w.waiting > 0
            and (c.vos is None or vo in c.vos)
            and any(f.cores >= w.cores for f in c.flavors)
            for w in snap.work
            for c in starting
        )

    below = {vo for vo, p in pledges.items() if held[vo] < p and waits(vo)}
    new: dict[str, int] = defaultdict(int)
    for a in actions:
        if isinstance(a, StartVMs) and a.cloud in {c.name for c in starting}:
            cores = next(f.cores for f in FLAVORS if f.name == a.flavor)
            new[a.vo] += a.count * cores
    for vo, cores in new.items():
        if below - {vo}:
            assert held[vo] + cores <= max(held[vo], pledges.get(vo, 0)), (vo, held, new, pledges)

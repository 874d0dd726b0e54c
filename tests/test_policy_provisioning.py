"""The provisioning policy: table-driven cases and properties that must hold for any input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudpilot.domain.provisioning import (
    CloudOrder,
    CloudView,
    ProvisioningKnobs,
    ProvisioningSnapshot,
    StartVMs,
    StopVM,
    VMView,
    WorkClass,
)
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.policy.provisioning import backoff_until, best_flavor, decide

NOW = 10_000.0
KNOBS = ProvisioningKnobs()
SMALL, LARGE = Flavor("small", 1, 2048), Flavor("large", 4, 8192)


def work(vo: str = "lhcb", waiting: int = 10, cores: int = 1, wall: int = 3600, **kw: object) -> WorkClass:
    fields = dict(memory_mb=None, tags=frozenset(), sites_allow=frozenset(), sites_deny=frozenset())
    fields.update(kw)
    return WorkClass(vo=vo, cores=cores, wall_seconds=wall, waiting=waiting, **fields)  # type: ignore[arg-type]


def cloud(name: str = "c1", **kw: object) -> CloudView:
    fields: dict[str, object] = dict(flavors=(SMALL, LARGE), vos=None, max_vms=100, start_rate_per_minute=100)
    fields.update(kw)
    return CloudView(name=name, **fields)  # type: ignore[arg-type]


def vm(id: str, vo: str = "lhcb", state: VMState = VMState.BOOTING, cores: int = 1, free: int | None = None,
       idle_since: float | None = None) -> VMView:  # fmt: skip
    return VMView(id, vo, "small" if cores == 1 else "large", state, cores, 2048 * cores,
                  cores if free is None else free, idle_since)  # fmt: skip


def starts(actions: list) -> dict[tuple[str, str, str], int]:  # type: ignore[type-arg]
    return {(a.cloud, a.vo, a.flavor): a.count for a in actions if isinstance(a, StartVMs)}


def test_starts_what_the_waiting_jobs_need_with_least_waste() -> None:
    snap = ProvisioningSnapshot(work=(work(waiting=8),), clouds=(cloud(),))
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "lhcb", "large"): 2}
    snap = ProvisioningSnapshot(work=(work(waiting=3),), clouds=(cloud(),))
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "lhcb", "small"): 3}  # a large VM would waste a core


def test_booting_vms_are_supply() -> None:
    booting = tuple(vm(f"v{i}") for i in range(4))
    snap = ProvisioningSnapshot(work=(work(waiting=5),), clouds=(cloud(vms=booting),))
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "lhcb", "small"): 1}


def test_quota_and_rate_cut_the_starts() -> None:
    snap = ProvisioningSnapshot(work=(work(waiting=50),), clouds=(cloud(max_vms=3, flavors=(SMALL,)),))
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "lhcb", "small"): 3}
    slow = cloud(flavors=(SMALL,), start_rate_per_minute=1, starts_last_minute=0)
    assert starts(decide(ProvisioningSnapshot((work(waiting=50),), (slow,)), KNOBS, NOW)) == {
        ("c1", "lhcb", "small"): 1
    }
    done = cloud(flavors=(SMALL,), start_rate_per_minute=1, starts_last_minute=1)
    assert starts(decide(ProvisioningSnapshot((work(waiting=50),), (done,)), KNOBS, NOW)) == {}


def test_cheapest_cloud_first_then_overflow() -> None:
    cheap = cloud("cheap", max_vms=2, flavors=(SMALL,), price_per_core_hour=0.01)
    dear = cloud("dear", flavors=(SMALL,), price_per_core_hour=0.05, priority=9)
    snap = ProvisioningSnapshot(work=(work(waiting=5),), clouds=(dear, cheap))
    assert starts(decide(snap, KNOBS, NOW)) == {("cheap", "lhcb", "small"): 2, ("dear", "lhcb", "small"): 3}
    by_priority = KNOBS.model_copy(update={"cloud_order": CloudOrder.PRIORITY})
    assert starts(decide(snap, by_priority, NOW)) == {("dear", "lhcb", "small"): 5}


def test_not_enough_work_starts_nothing() -> None:
    snap = ProvisioningSnapshot(work=(work(waiting=1, wall=60),), clouds=(cloud(flavors=(SMALL,)),))
    assert starts(decide(snap, KNOBS, NOW)) == {}  # 60 s of work < 300 s per core


def test_cloud_backs_off_after_boot_failures() -> None:
    failing = cloud("bad", boot_failures_in_row=2, last_boot_failure_at=NOW - 500, flavors=(SMALL,))
    assert backoff_until(failing, KNOBS) == NOW - 500 + 600
    good = cloud("good", flavors=(SMALL,), price_per_core_hour=1.0)
    snap = ProvisioningSnapshot(work=(work(waiting=2),), clouds=(failing, good))
    assert starts(decide(snap, KNOBS, NOW)) == {("good", "lhcb", "small"): 2}
    assert starts(decide(snap, KNOBS, NOW + 200)) == {("bad", "lhcb", "small"): 2}  # back-off over
    capped = cloud("bad", boot_failures_in_row=10, last_boot_failure_at=NOW)
    assert backoff_until(capped, KNOBS) == NOW + 1800


def test_vo_image_tags_and_sites_decide_where() -> None:
    gpu = cloud("gpu", vos=frozenset({"atlas"}), tags=frozenset({"gpu"}), site="CERN", flavors=(SMALL,))
    plain = cloud("plain", site="RAL", flavors=(SMALL,))
    snap = ProvisioningSnapshot(
        work=(
            work("atlas", waiting=1, tags=frozenset({"gpu"})),
            work("lhcb", waiting=1, tags=frozenset({"gpu"})),  # no cloud has gpu for lhcb
            work("lhcb", waiting=2, wall=7200, sites_deny=frozenset({"RAL"})),  # only CERN, but no image
        ),
        clouds=(gpu, plain),
    )
    assert starts(decide(snap, KNOBS, NOW)) == {("gpu", "atlas", "small"): 1}


def test_shares_of_a_cloud_when_two_vos_want_it() -> None:
    shared = cloud(max_vms=8, flavors=(SMALL,))
    snap = ProvisioningSnapshot(
        work=(work("lhcb", waiting=20), work("alice", waiting=20)), clouds=(shared,), vo_shares={"lhcb": 3, "alice": 1}
    )
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "lhcb", "small"): 6, ("c1", "alice", "small"): 2}
    alone = ProvisioningSnapshot(work=(work("alice", waiting=20),), clouds=(shared,), vo_shares={"lhcb": 3})
    assert starts(decide(alone, KNOBS, NOW)) == {("c1", "alice", "small"): 8}


def test_idle_vms_are_stopped_and_not_counted_as_supply() -> None:
    idle = vm("idle", state=VMState.RUNNING, idle_since=NOW - 400)
    fresh = vm("fresh", state=VMState.RUNNING, idle_since=NOW - 10)
    snap = ProvisioningSnapshot(work=(work(waiting=2),), clouds=(cloud(vms=(idle, fresh)),))
    actions = decide(snap, KNOBS, NOW)
    assert [a.vm_id for a in actions if isinstance(a, StopVM)] == ["idle"]
    assert starts(actions) == {("c1", "lhcb", "small"): 1}  # one job on "fresh", one new VM


def test_best_flavor_respects_memory() -> None:
    big_memory = work(waiting=4, memory_mb=4096)
    flavor, per_vm = best_flavor((SMALL, LARGE), big_memory, 4)  # type: ignore[misc]
    assert (flavor.name, per_vm) == ("large", 2)


# --- properties -----------------------------------------------------------------------------------------

flavors_st = st.lists(
    st.builds(
        Flavor, name=st.sampled_from(["a", "b", "c", "d"]), cores=st.integers(1, 16), memory_mb=st.integers(512, 65536)
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda f: f.name,
)
work_st = st.builds(
    WorkClass,
    vo=st.sampled_from(["lhcb", "atlas", "alice"]),
    cores=st.integers(1, 8),
    memory_mb=st.none() | st.integers(256, 16384),
    wall_seconds=st.integers(60, 200_000),
    tags=st.just(frozenset()),
    sites_allow=st.just(frozenset()),
    sites_deny=st.just(frozenset()),
    waiting=st.integers(0, 500),
)


@st.composite
def clouds_st(draw: st.DrawFn) -> CloudView:
    flavors = tuple(draw(flavors_st))
    n_vms = draw(st.integers(0, 6))
    vms = tuple(
        VMView(
            f"vm{i}",
            draw(st.sampled_from(["lhcb", "atlas", "alice"])),
            flavors[0].name,
            draw(st.sampled_from(list(VMState))),
            flavors[0].cores,
            flavors[0].memory_mb,
            draw(st.integers(0, flavors[0].cores)),
            None,
        )
        for i in range(n_vms)
    )
    return CloudView(
        name=draw(st.sampled_from(["c1", "c2", "c3", "c4"])),
        flavors=flavors,
        vos=draw(st.none() | st.just(frozenset({"lhcb"}))),
        max_vms=draw(st.integers(0, 40)),
        max_cores=draw(st.none() | st.integers(0, 200)),
        max_memory_mb=draw(st.none() | st.integers(0, 400_000)),
        start_rate_per_minute=draw(st.integers(0, 20)),
        starts_last_minute=draw(st.integers(0, 5)),
        price_per_core_hour=draw(st.floats(0, 1)),
        vms=vms,
    )


snapshots = st.builds(
    ProvisioningSnapshot,
    work=st.lists(work_st, max_size=5).map(tuple),
    clouds=st.lists(clouds_st(), max_size=3, unique_by=lambda c: c.name).map(tuple),
    vo_shares=st.fixed_dictionaries({"lhcb": st.floats(0.1, 5), "atlas": st.floats(0.1, 5)}),
)


@settings(max_examples=300, deadline=None)
@given(snapshots)
def test_never_beyond_quota_or_rate(snap: ProvisioningSnapshot) -> None:
    actions = decide(snap, KNOBS, NOW)
    for c in snap.clouds:
        live = [v for v in c.vms if v.state is not VMState.DESTROYED]
        flavor = {f.name: f for f in c.flavors}
        new = [(flavor[a.flavor], a.count) for a in actions if isinstance(a, StartVMs) and a.cloud == c.name]
        count = sum(n for _, n in new)
        if count == 0:
            continue
        assert len(live) + count <= c.max_vms
        assert count <= c.start_rate_per_minute - c.starts_last_minute
        if c.max_cores is not None:
            assert sum(v.cores for v in live) + sum(f.cores * n for f, n in new) <= c.max_cores
        if c.max_memory_mb is not None:
            assert sum(v.memory_mb for v in live) + sum(f.memory_mb * n for f, n in new) <= c.max_memory_mb


@settings(max_examples=300, deadline=None)
@given(snapshots)
def test_never_more_vms_than_waiting_jobs_and_deterministic(snap: ProvisioningSnapshot) -> None:
    actions = decide(snap, KNOBS, NOW)
    assert actions == decide(snap, KNOBS, NOW)
    for vo in {"lhcb", "atlas", "alice"}:
        waiting = sum(w.waiting for w in snap.work if w.vo == vo)
        started = sum(a.count for a in actions if isinstance(a, StartVMs) and a.vo == vo)
        assert started <= waiting  # every new VM has at least one job to run


@settings(max_examples=200, deadline=None)
@given(work_st, flavors_st, st.integers(1, 20))
def test_enough_booting_supply_starts_nothing(wc: WorkClass, flavors: list[Flavor], extra: int) -> None:
    flavor = flavors[0]
    per_vm = min(flavor.cores // wc.cores, flavor.memory_mb // wc.memory_mb if wc.memory_mb else 1 << 30)
    if per_vm == 0 or wc.waiting == 0:
        return
    needed = -(-wc.waiting // per_vm)
    booting = tuple(
        VMView(f"b{i}", wc.vo, flavor.name, VMState.BOOTING, flavor.cores, flavor.memory_mb, flavor.cores, None)
        for i in range(needed + extra)
    )
    c = CloudView("c1", (flavor,), None, max_vms=1000, start_rate_per_minute=1000, vms=booting)
    assert starts(decide(ProvisioningSnapshot((wc,), (c,)), KNOBS, NOW)) == {}

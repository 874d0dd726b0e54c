"""Why work waits (policy/explain.py) and the min-work rule that only defers: table cases, and properties
that hold the explanation and the decision together for any snapshot."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudpilot.domain.provisioning import (
    CloudMode,
    PilotView,
    ProvisioningKnobs,
    ProvisioningSnapshot,
    StartVMs,
    WorkClass,
)
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.policy.budget import suits
from cloudpilot.policy.explain import WaitReason, explain, why_unsuited
from cloudpilot.policy.provisioning import decide
from tests.test_policy_provisioning import NOW, cloud, clouds_st, vm, work, work_st

DEFAULTS = ProvisioningKnobs()  # min_work_seconds_per_core 300, max_defer_seconds 60
EAGER = ProvisioningKnobs(min_work_seconds_per_core=0)
TWO_CORES = (Flavor("m", 2, 4096),)


def only(snap: ProvisioningSnapshot, knobs: ProvisioningKnobs = DEFAULTS) -> WaitReason:
    (reason,) = explain(snap, knobs, NOW)
    assert reason is not None
    return reason


def started(snap: ProvisioningSnapshot, knobs: ProvisioningKnobs = DEFAULTS) -> int:
    return sum(a.count for a in decide(snap, knobs, NOW) if isinstance(a, StartVMs))


# --- the min-work rule defers, never starves ----------------------------------------------------------------


def test_the_whole_waiting_work_counts_not_one_vms_worth() -> None:
    # 100 jobs of 120 s on 2-core VMs (600 core-s needed per VM): 12,000 core-s fill 20 VMs, which take the
    # class in turn. One VM's jobs alone (240 core-s) would have started none.
    snap = ProvisioningSnapshot(
        work=(work(waiting=100, wall=120, waiting_since=NOW),), clouds=(cloud(flavors=TWO_CORES),)
    )
    assert started(snap) == 20
    assert only(snap).summary == "waiting for a pilot: VMs on c1 will take it"


def test_a_lone_short_job_is_deferred_then_started_after_max_defer() -> None:
    fresh = ProvisioningSnapshot(work=(work(waiting=1, wall=60, waiting_since=NOW - 10),), clouds=(cloud(),))
    assert started(fresh) == 0
    reason = only(fresh)
    # One core of the smallest flavor: 60 of 300 core-seconds; NOW - 10 + 60 s.
    assert reason.summary == "deferred: 60 of 300 core-seconds, starts by 1970-01-01T02:47:30Z"
    assert reason.clouds == {"c1": reason.summary}
    old = ProvisioningSnapshot(work=(work(waiting=1, wall=60, waiting_since=NOW - 60),), clouds=(cloud(),))
    assert started(old) == 1  # deferred for max_defer_seconds: a VM starts anyway


def test_the_threshold_is_weighed_against_the_clouds_boot_time() -> None:
    def snap(boot: float | None) -> ProvisioningSnapshot:
        return ProvisioningSnapshot(
            work=(work(waiting=1, wall=60, waiting_since=NOW),), clouds=(cloud(boot_seconds=boot),)
        )

    assert started(snap(1.5)) == 1  # boots in seconds: nothing is deferred
    assert started(snap(59)) == 1  # a 60-s job is worth a boot of 59 s
    assert started(snap(61)) == 0
    assert started(snap(None)) == 0  # not known: the configured 300 s per core


# --- reasons ------------------------------------------------------------------------------------------------


def test_reasons_of_quota_rate_backoff_shutdown_and_pledge() -> None:
    running = tuple(vm(f"v{i}", state=VMState.RUNNING, free=0) for i in range(2))
    quota = ProvisioningSnapshot(work=(work(waiting=3),), clouds=(cloud(max_vms=2, vms=running),))
    assert only(quota, EAGER).summary == "quota full (2/2 VMs)"

    rate = ProvisioningSnapshot(work=(work(waiting=3),), clouds=(cloud(start_rate_per_minute=2, starts_last_minute=2),))
    assert only(rate, EAGER).summary == "start rate reached (2 VMs a minute)"

    failing = cloud(boot_failures_in_row=4, last_boot_failure_at=NOW - 10, last_error="boot timeout after 600 s")
    backoff = ProvisioningSnapshot(work=(work(waiting=3),), clouds=(failing,))
    assert only(backoff, EAGER).summary == (
        "backing off until 1970-01-01T03:16:30Z after 4 failed boot cycle(s): boot timeout after 600 s"
    )

    closed = ProvisioningSnapshot(work=(work(waiting=3),), clouds=(cloud(shutdown_pending=True),))
    assert only(closed, EAGER).summary.startswith("shutdown pending")

    site = cloud(site="siteA", max_vms=2, vms=(vm("a1", vo="alice", state=VMState.RUNNING, free=0),))
    pledged = ProvisioningSnapshot(
        work=(work(vo="lhcb", waiting=5), work(vo="alice", waiting=5)),
        clouds=(site,),
        pledges={"siteA": {"alice": 2, "lhcb": 0}},
    )
    lhcb = explain(pledged, EAGER, NOW)[0]
    assert lhcb is not None and lhcb.summary == "VO lhcb at its pledge at siteA while another VO waits below its own"


def test_static_reasons_are_said_once_for_every_cloud() -> None:
    clouds = (cloud("a", tags=frozenset({"el8"})), cloud("b", site="siteB", disabled_vos=frozenset({"lhcb"})))
    tagged = ProvisioningSnapshot(work=(work(tags=frozenset({"el9"})),), clouds=clouds)
    reason = only(tagged)
    assert reason.summary.startswith("tag el9 offered by no cloud")
    assert reason.clouds == {"a": "offers no tag el9", "b": "VO lhcb disabled at siteB"}

    huge = ProvisioningSnapshot(work=(work(cores=64),), clouds=(cloud("a"), cloud("b", flavors=TWO_CORES)))
    assert only(huge).summary.startswith("no flavor on any cloud with 64 cores (largest 4)")
    assert only(huge).clouds == {"a": "no flavor with 64 cores (largest 4)", "b": "no flavor with 64 cores (largest 2)"}

    denied = ProvisioningSnapshot(work=(work(sites_deny=frozenset({"siteB"})),), clouds=(cloud("b", site="siteB"),))
    assert only(denied).clouds == {"b": "site siteB is excluded by the job"}


def test_pilots_reason_from_what_hand_started_pilots_offered() -> None:
    no_clouds = ProvisioningSnapshot(work=(work(cores=64),), clouds=())
    assert only(no_clouds).pilots == "no pilot of VO lhcb asked for work in the last 10 min"
    assert only(no_clouds).summary.startswith("no clouds configured: no pilot of VO lhcb")
    small = PilotView("lhcb", 8, None, None, NOW - 30)
    stale = PilotView("lhcb", 128, None, None, NOW - 3600)
    offered = ProvisioningSnapshot(work=(work(cores=64),), clouds=(), pilots=(small, stale))
    assert only(offered).pilots == "no pilot offered 64 cores in the last 10 min (largest 8)"
    big = ProvisioningSnapshot(work=(work(cores=64),), clouds=(), pilots=(PilotView("lhcb", 64, None, None, NOW),))
    assert only(big).pilots is None
    assert only(big).summary == "no clouds configured: a pilot seen lately offers enough for it"


def test_a_disabled_vo_gets_no_vm() -> None:
    snap = ProvisioningSnapshot(work=(work(),), clouds=(cloud(site="s", disabled_vos=frozenset({"lhcb"})),))
    assert started(snap, EAGER) == 0
    assert only(snap, EAGER).summary.startswith("VO lhcb disabled at every site")


# --- properties: the explanation never disagrees with the decision ------------------------------------------

# Big classes from the provisioning tests, and small short ones that the min-work rule defers.
with_since = st.one_of(
    work_st.map(lambda wc: _since(wc)),
    st.builds(
        lambda vo, waiting, wall, ago: work(vo=vo, waiting=waiting, wall=wall, waiting_since=NOW - ago),
        st.sampled_from(["lhcb", "atlas", "alice"]),
        st.integers(0, 4),
        st.integers(1, 400),
        st.integers(0, 90),
    ),
)


def _since(wc: WorkClass) -> WorkClass:
    return WorkClass(
        **{**{f: getattr(wc, f) for f in WorkClass.__slots__}, "waiting_since": NOW - wc.wall_seconds % 120}
    )


@st.composite
def mixed_clouds(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    c = draw(clouds_st())
    extra = {
        "boot_seconds": draw(st.none() | st.floats(0, 900)),
        "boot_failures_in_row": draw(st.integers(0, 3)),
        "last_boot_failure_at": NOW - draw(st.integers(0, 4000)),
        "shutdown_pending": draw(st.booleans()),
        "mode": draw(st.sampled_from([CloudMode.DEMAND, CloudMode.DEMAND, CloudMode.VACUUM])),
        "disabled_vos": draw(st.sampled_from([frozenset(), frozenset({"atlas"})])),
    }
    return type(c)(**{**{f: getattr(c, f) for f in type(c).__slots__}, **extra})


explained_snapshots = st.builds(
    ProvisioningSnapshot,
    work=st.lists(with_since, max_size=5).map(tuple),
    clouds=st.lists(mixed_clouds(), max_size=3, unique_by=lambda c: c.name).map(tuple),
    vo_shares=st.fixed_dictionaries({"lhcb": st.floats(0.1, 5), "atlas": st.floats(0.1, 5)}),
)


@settings(max_examples=300, deadline=None)
@given(explained_snapshots, st.sampled_from([DEFAULTS, EAGER]))
def test_explanations_agree_with_the_decision(snap: ProvisioningSnapshot, knobs: ProvisioningKnobs) -> None:
    reasons = explain(snap, knobs, NOW)
    actions = decide(snap, knobs, NOW)
    assert len(reasons) == len(snap.work)
    starting = {(a.cloud, a.vo) for a in actions if isinstance(a, StartVMs)}
    for wc, reason in zip(snap.work, reasons, strict=True):
        if wc.waiting == 0:
            assert reason is None
            continue
        assert reason is not None and reason.summary
        for c in snap.clouds:
            said = reason.clouds.get(c.name)
            # A cloud the class cannot use is named as such, with the reason suits() has.
            assert (why_unsuited(c, wc) is None) == suits(c, wc)
            if not suits(c, wc):
                assert said == why_unsuited(c, wc)
            # A cloud said to start VMs for the class does start VMs for its VO.
            if said is not None and "starting or booting here" in said and c.mode is CloudMode.DEMAND:
                assert (c.name, wc.vo) in starting or any(v.vo == wc.vo for v in c.vms)
            # A cloud blocked by a limit starts nothing for the class's VO beyond what it already did, and a
            # deferred or backed-off one starts nothing at all for it.
            if said is not None and said.startswith(("deferred", "backing off", "shutdown pending")):
                assert not any(a.cloud == c.name and a.vo == wc.vo and a.reason.startswith(f"{a.count} VM") and
                               _only_for(snap, wc, a.vo) for a in actions if isinstance(a, StartVMs))  # fmt: skip


def _only_for(snap: ProvisioningSnapshot, wc: WorkClass, vo: str) -> bool:
    """True when ``wc`` is its VO's only class with waiting jobs (a start for the VO is then a start for it)."""
    return [w for w in snap.work if w.vo == vo and w.waiting > 0] == [wc]


@settings(max_examples=200, deadline=None)
@given(explained_snapshots)
def test_a_class_nobody_can_run_starts_nothing_and_says_why(snap: ProvisioningSnapshot) -> None:
    actions = decide(snap, EAGER, NOW)
    for wc, reason in zip(snap.work, explain(snap, EAGER, NOW), strict=True):
        if wc.waiting and snap.clouds and not any(suits(c, wc) for c in snap.clouds):
            assert reason is not None
            assert set(reason.clouds) == {c.name for c in snap.clouds}
            if _only_for(snap, wc, wc.vo):
                assert not any(isinstance(a, StartVMs) and a.vo == wc.vo and a.reason[0].isdigit() for a in actions)

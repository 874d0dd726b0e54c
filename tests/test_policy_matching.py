"""The matcher's ranking: fit, VO fair share, user fair share, priority."""

from cloudpilot.domain.matching import Offer, TaskQueue
from cloudpilot.policy.fairshare import UsageRecord, build_share_state, effective_usage
from cloudpilot.policy.matching import rank

HL = 3600.0


def tq(id: int, vo: str = "lhcb", owner: str = "a", priority: int = 0, cores: int = 1) -> TaskQueue:
    return TaskQueue(id, vo, owner, priority, cores, None, 600, frozenset(), frozenset(), frozenset())


def test_priority_orders_a_users_own_jobs() -> None:
    shares = build_share_state({}, {}, now=0, half_life=HL)
    ranked = rank(Offer(cores=1), [tq(1, priority=1), tq(2, priority=5), tq(3, priority=3)], shares)
    assert [t.id for t in ranked] == [2, 3, 1]


def test_vo_furthest_below_its_share_goes_first() -> None:
    usage = {("atlas", "x"): UsageRecord(running_cores=10), ("lhcb", "y"): UsageRecord(running_cores=10)}
    # atlas has 3x the share of lhcb, so at equal usage atlas is further below its share.
    shares = build_share_state(usage, {"atlas": 3.0, "lhcb": 1.0}, now=0, half_life=HL)
    ranked = rank(Offer(cores=1), [tq(1, vo="lhcb", owner="y"), tq(2, vo="atlas", owner="x")], shares)
    assert [t.vo for t in ranked] == ["atlas", "lhcb"]
    # With 40 cores running for atlas, it is above its 3:1 share: lhcb comes first.
    usage[("atlas", "x")] = UsageRecord(running_cores=40)
    shares = build_share_state(usage, {"atlas": 3.0, "lhcb": 1.0}, now=0, half_life=HL)
    ranked = rank(Offer(cores=1), [tq(1, vo="lhcb", owner="y"), tq(2, vo="atlas", owner="x")], shares)
    assert [t.vo for t in ranked] == ["lhcb", "atlas"]


def test_user_with_less_recent_usage_goes_first_within_a_vo() -> None:
    usage = {("lhcb", "heavy"): UsageRecord(core_seconds=10 * HL, updated_at=0), ("lhcb", "light"): UsageRecord()}
    shares = build_share_state(usage, {}, now=0, half_life=HL)
    ranked = rank(Offer(cores=1), [tq(1, owner="heavy", priority=9), tq(2, owner="light")], shares)
    assert [t.owner for t in ranked] == ["light", "heavy"]


def test_usage_decays_with_half_life() -> None:
    rec = UsageRecord(core_seconds=1000.0, updated_at=0.0)
    assert effective_usage(rec, now=HL, half_life=HL) == 500.0
    assert effective_usage(UsageRecord(running_cores=2), now=0, half_life=HL) == 2 * HL


def test_pilot_vo_filter_and_fit() -> None:
    shares = build_share_state({}, {}, now=0, half_life=HL)
    queues = [tq(1, vo="atlas"), tq(2, vo="lhcb", cores=8), tq(3, vo="lhcb")]
    assert [t.id for t in rank(Offer(cores=4), queues, shares, vos={"lhcb"})] == [3]
    assert [t.id for t in rank(Offer(cores=8), queues, shares, vos=None)] == [1, 2, 3]

"""The LHCb workload model of the benchmarks: loading, scaled job samples, pilot offers, determinism."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from cloudpilot.domain.jobs import JobSpec
from cloudpilot.domain.matching import Offer, TaskQueue, fits
from cloudpilot.sim.lhcb import DEFAULT_DATA_DIR, VO, QueueClass, WorkloadModel, load_model, offer_fits

N_SAMPLE = 10_000


def _csv_rows(name: str) -> list[dict[str, str]]:
    (path,) = DEFAULT_DATA_DIR.glob(f"{name}_*.csv")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", params=["csv", "embedded"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> WorkloadModel:
    if request.param == "csv":
        if not DEFAULT_DATA_DIR.is_dir():
            pytest.skip(f"the snapshot is not at {DEFAULT_DATA_DIR}")
        return load_model()
    # A directory that does not exist selects the embedded model.
    return load_model(tmp_path_factory.mktemp("no-data") / "absent")


def _class_key(owner: str, spec: dict) -> str:
    """What cloudpilot groups jobs into task queues by (the VO is the same for all)."""
    return json.dumps([owner, spec["priority"], spec["requirements"]], sort_keys=True)


def test_model_from_the_csvs_has_one_class_per_real_queue() -> None:
    if not DEFAULT_DATA_DIR.is_dir():
        pytest.skip(f"the snapshot is not at {DEFAULT_DATA_DIR}")
    model = load_model()
    queues = _csv_rows("jobs_per_tq")
    assert "real CSVs" in model.source
    assert len(model.classes) == len(queues) == 498
    assert model.total_jobs == sum(int(q["n_jobs"]) for q in queues)
    assert set(model.owners) == {q["OwnerGroup"] for q in queues}
    assert {c.tq_id for c in model.classes} == {int(q["TQId"]) for q in queues}
    assert model.largest_share == pytest.approx(max(int(q["n_jobs"]) for q in queues) / model.total_jobs)


def test_platform_tags_reproduce_the_accepted_platform_marginals() -> None:
    """Each host type serves as many waiting jobs as the snapshot says accept its platform."""
    if not DEFAULT_DATA_DIR.is_dir():
        pytest.skip(f"the snapshot is not at {DEFAULT_DATA_DIR}")
    model = load_model()
    for host in model.hosts:
        served = sum(c.n_jobs for c in model.classes if c.tags and c.tags[0] in host.serves)
        assert served == pytest.approx(host.weight, rel=0.01), host.platform


def test_embedded_fallback_is_shaped_like_the_snapshot(tmp_path: Path) -> None:
    model = load_model(tmp_path / "absent")
    assert model.source.startswith("embedded")
    assert len(model.classes) == 498
    assert model.total_jobs == pytest.approx(871_925, rel=0.02)
    assert model.owners == ("lhcb_data", "lhcb_mc", "lhcb_mcproc", "lhcb_user")
    assert model.largest_share == pytest.approx(4966 / 871_925, rel=0.05)
    assert len({s for c in model.classes for s in c.sites_allow}) == 60


def test_scaled_sample_keeps_the_classes_and_their_shape(model: WorkloadModel) -> None:
    jobs = list(model.sample_jobs(N_SAMPLE, seed=1))
    assert len(jobs) == N_SAMPLE
    per_class = Counter(_class_key(owner, spec) for owner, spec in jobs)
    # Every real queue keeps its own requirement class in cloudpilot.
    assert len(per_class) == len(model.classes)
    assert max(per_class.values()) / N_SAMPLE == pytest.approx(model.largest_share, rel=0.1)
    assert {owner for owner, _ in jobs} == set(model.owners)
    for _, spec in jobs[:200]:
        JobSpec.model_validate(spec)


def test_every_scale_keeps_every_class(model: WorkloadModel) -> None:
    for n in (10**5, 10**6):
        counts = model.allocate(n)
        assert sum(counts) == n
        assert min(counts) >= 1
    big = model.allocate(10**6)
    assert max(big) / 10**6 == pytest.approx(model.largest_share, rel=0.01)
    assert sum(1 for c in model.allocate(100) if c) == 100


def test_offers_are_mostly_eligible(model: WorkloadModel) -> None:
    offers = model.sample_offers(1000, seed=1)
    assert model.eligible_share(offers) >= 0.9
    assert sum(model.eligible_counts(offers)) / len(offers) > 50
    assert {o["cores"] for o in offers} <= set(range(1, 9))
    assert Counter(o["cores"] for o in offers).most_common(2)[0][0] in (1, 8)
    assert all(o["memory_mb"] >= 2000 * o["cores"] and o["tags"] for o in offers)


def test_local_fit_rule_agrees_with_cloudpilots(model: WorkloadModel) -> None:
    task_queues = [_task_queue(i, c) for i, c in enumerate(model.classes)]
    for raw in model.sample_offers(40, seed=2):
        offer = Offer.model_validate(raw)
        assert [fits(tq, offer) for tq in task_queues] == [offer_fits(c, raw) for c in model.classes]


def _task_queue(tq_id: int, c: QueueClass) -> TaskQueue:
    tags, allow, deny = frozenset(c.tags), frozenset(c.sites_allow), frozenset(c.sites_deny)
    return TaskQueue(tq_id, VO, c.owner, c.priority, c.cores, c.memory_mb, c.wall_seconds, tags, allow, deny)


def test_samples_are_deterministic_for_a_seed(model: WorkloadModel) -> None:
    first = list(model.sample_jobs(2000, seed=7))
    assert first == list(model.sample_jobs(2000, seed=7))
    assert first != list(model.sample_jobs(2000, seed=8))
    assert model.sample_offers(200, seed=7) == model.sample_offers(200, seed=7)
    assert model.sample_offers(200, seed=7) != model.sample_offers(200, seed=8)
    assert [c.key() for c in model.classes] == [c.key() for c in _rebuilt(model).classes]


def _rebuilt(model: WorkloadModel) -> WorkloadModel:
    """The same model built again (its build does not depend on any caller's seed)."""
    return load_model() if "real CSVs" in model.source else load_model(Path("/nonexistent/lhcb-snapshot"))

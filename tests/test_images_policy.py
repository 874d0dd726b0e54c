"""Images in the pure parts: which cloud may boot what (domain), the provisioning policy starting VMs of the
image a class requires and nothing unendorsed, and the matcher's fit on the offer's image."""

from __future__ import annotations

import json

from cloudpilot.context.userdata import PilotContext, cloud_config_of
from cloudpilot.domain.images import HeldImage, ImageCatalog, ImageState, cloud_images, image_state
from cloudpilot.domain.jobs import Requirements
from cloudpilot.domain.matching import Offer, TaskQueue, fits, task_queue_key
from cloudpilot.domain.provisioning import (
    CloudView,
    ProvisioningKnobs,
    ProvisioningSnapshot,
    StartVMs,
    VMView,
    WorkClass,
)
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.policy.budget import PLAIN_IMAGE, image_for, suits
from cloudpilot.policy.fairshare import build_share_state
from cloudpilot.policy.matching import rank
from cloudpilot.policy.provisioning import decide

NOW = 1_800_000_000.0
KNOBS = ProvisioningKnobs(min_work_seconds_per_core=0)
SMALL = Flavor("small", 1, 2048)
EL9 = frozenset({"os:el9", "osversion:9.3", "arch:x86_64"})
EL8 = frozenset({"os:el8", "osversion:8.9", "arch:x86_64"})


def work(waiting: int = 2, image: str | None = None, tags: frozenset[str] = frozenset(), vo: str = "lhcb") -> WorkClass:
    return WorkClass(vo, 1, None, 3600, tags, frozenset(), frozenset(), waiting, image)


def cloud(name: str, images: dict[str, frozenset[str]], **kw: object) -> CloudView:
    fields: dict[str, object] = dict(flavors=(SMALL,), vos=None, max_vms=10, start_rate_per_minute=100)
    fields.update(endorsed_only=True, images=images, **kw)
    return CloudView(name=name, **fields)  # type: ignore[arg-type]


def starts(actions: list) -> dict[tuple[str, str | None], int]:  # type: ignore[type-arg]
    return {(a.cloud, a.image): a.count for a in actions if isinstance(a, StartVMs)}


def held(identifier: str, expires_in: float = 3600, **kw: object) -> HeldImage:
    return HeldImage(identifier, 1, "lhcb-images", "2", NOW + expires_in, **kw)  # type: ignore[arg-type]


# --- which images a cloud may boot ------------------------------------------------------------------------------


def test_a_cloud_boots_the_endorsed_images_it_maps_and_says_why_not_the_others() -> None:
    catalog = ImageCatalog(
        True,
        {
            "a": held("a", tags=EL9),
            "old": held("old", expires_in=-1),
            "bad": held("bad", revoked_at=NOW - 5, revoked_by="root", revoke_reason="CVE-2026-1"),
            "gone": held("gone", listed=False),
            "broken": held("broken", rejected_reason="sha512 mismatch"),
        },
    )
    mapping = {"a": "ami-a", "old": "ami-old", "bad": "ami-bad", "gone": "ami-gone", "broken": "ami-b", "x": "ami-x"}
    ci = cloud_images(catalog, NOW, mapping, {"lhcb": "ami-a", "atlas": "cernvm4"})
    assert ci.bootable == {"a": EL9}
    assert ci.refused["old"].startswith("expired: endorsement expired at")
    assert ci.refused["bad"].startswith("revoked: revoked by root") and "CVE-2026-1" in ci.refused["bad"]
    assert ci.refused["gone"].startswith("unendorsed: no longer in list lhcb-images")
    assert ci.refused["broken"] == "rejected: sha512 mismatch"
    assert ci.refused["x"] == "unendorsed: in no image list this server holds"
    # A VO's configured image counts when it is (or maps to) an endorsed identifier; atlas's is neither.
    assert ci.vo_images == {"lhcb": "a", "atlas": None}
    assert "cernvm4" in ci.refused and "VO atlas" in ci.refused["cernvm4"]
    assert ci.identifier_of("ami-a") == "a" and ci.identifier_of("ami-zzz") is None


def test_without_image_lists_nothing_changes() -> None:
    ci = cloud_images(ImageCatalog(False), NOW, {}, {"lhcb": "cernvm4"})
    assert not ci.enforced and ci.bootable == {} and ci.refused == {}
    plain = CloudView("c", (SMALL,), None, 10)
    assert image_for(plain, work()) == PLAIN_IMAGE
    assert image_for(plain, work(image="a")) is None  # no list, no endorsed image: a class requiring one waits


def test_the_expiry_of_an_image_is_read_at_now() -> None:
    image = held("a", expires_in=10)
    assert image_state(image, NOW)[0] is ImageState.ENDORSED
    assert image_state(image, NOW + 10)[0] is ImageState.EXPIRED


# --- the policy -------------------------------------------------------------------------------------------------


def test_a_class_requiring_an_image_starts_vms_only_where_it_may_boot() -> None:
    c1, c2 = cloud("c1", {"a": EL9}), cloud("c2", {"b": EL8})
    snap = ProvisioningSnapshot(work=(work(image="a"), work(image="b", waiting=3)), clouds=(c1, c2))
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "a"): 2, ("c2", "b"): 3}
    reasons = [a.reason for a in decide(snap, KNOBS, NOW) if isinstance(a, StartVMs)]
    assert any("of image a" in r for r in reasons)


def test_an_expired_or_unmapped_image_is_never_started() -> None:
    # "a" expired: the service leaves it out of the cloud's bootable images; no cloud maps "z".
    c1 = cloud("c1", {})
    snap = ProvisioningSnapshot(work=(work(image="a"), work(image="z")), clouds=(c1,))
    assert decide(snap, KNOBS, NOW) == []
    assert not suits(c1, work(image="a"))


def test_free_slots_of_a_vm_serve_only_classes_its_image_suits() -> None:
    running_b = VMView("vb", "lhcb", "small", VMState.RUNNING, 1, 2048, 1, None, image="b", image_tags=EL8)
    c1 = cloud("c1", {"a": EL9, "b": EL8}, vms=(running_b,))
    # A class requiring "a" cannot use the free core of the VM of "b": one new VM of "a".
    snap = ProvisioningSnapshot(work=(work(image="a", waiting=1),), clouds=(c1,))
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "a"): 1}
    # A class requiring "b", or any image without tags, takes it: nothing starts.
    for wc in (work(image="b", waiting=1), work(waiting=1)):
        assert starts(decide(ProvisioningSnapshot(work=(wc,), clouds=(c1,)), KNOBS, NOW)) == {}
    # A class needing os:el9 does not: the VM of "b" offers os:el8.
    snap = ProvisioningSnapshot(work=(work(waiting=1, tags=frozenset({"os:el9"})),), clouds=(c1,))
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "a"): 1}


def test_tags_an_image_provides_satisfy_a_class_without_an_image() -> None:
    c1 = cloud("c1", {"a": EL9, "b": EL8})
    assert image_for(c1, work(tags=frozenset({"os:el8"}))) == "b"
    assert image_for(c1, work(tags=frozenset({"os:el9", "arch:x86_64"}))) == "a"
    assert image_for(c1, work(tags=frozenset({"gpu"}))) is None
    assert image_for(cloud("c2", {"a": EL9}, tags=frozenset({"gpu"})), work(tags=frozenset({"gpu", "os:el9"}))) == "a"


def test_a_vo_boots_its_endorsed_image_and_nothing_when_its_image_is_not_endorsed() -> None:
    c1 = cloud("c1", {"a": EL9, "b": EL8}, vo_images={"lhcb": "b", "atlas": None})
    assert image_for(c1, work(vo="lhcb")) == "b"
    assert image_for(c1, work(vo="atlas")) is None  # its configured image is refused: never a fallback
    assert image_for(c1, work(vo="cms")) is None  # no image configured for it, and no "*"
    assert image_for(c1, work(vo="atlas", image="a")) == "a"  # an image the jobs require is theirs to choose
    snap = ProvisioningSnapshot(work=(work(vo="atlas"), work(vo="lhcb", waiting=1)), clouds=(c1,))
    assert starts(decide(snap, KNOBS, NOW)) == {("c1", "b"): 1}


# --- matching ---------------------------------------------------------------------------------------------------


def tq(image: str | None, id: int = 1) -> TaskQueue:
    return TaskQueue(id, "lhcb", "alice", 0, 1, None, 3600, frozenset(), frozenset(), frozenset(), image)


def test_a_job_requiring_an_image_fits_only_an_offer_of_that_image() -> None:
    assert fits(tq("a"), Offer(image="a"))
    assert not fits(tq("a"), Offer(image="b"))
    assert not fits(tq("a"), Offer())  # a pilot that names no image
    assert fits(tq(None), Offer(image="b"))  # a job without an image runs anywhere
    shares = build_share_state({}, {}, NOW, 86400)
    assert [t.id for t in rank(Offer(image="a"), [tq("a", 1), tq("b", 2), tq(None, 3)], shares)] == [1, 3]


def test_the_task_queue_key_separates_images_and_keeps_the_keys_of_classes_without_one() -> None:
    plain, with_a = Requirements(), Requirements(image="a")
    assert task_queue_key("lhcb", "alice", 0, plain, 3600) != task_queue_key("lhcb", "alice", 0, with_a, 3600)
    # the key computed before images existed: existing classes keep their task queues
    assert task_queue_key("lhcb", "alice", 0, plain, 3600) == "9e597ef035839829565ac92c443b8716"


def test_the_user_data_tells_the_pilot_its_image_and_the_image_tags() -> None:
    ctx = PilotContext("http://127.0.0.1:8080", "vm-1", "lhcb", "cp_1_x", image="el9-a", tags=("gpu", "os:el9"))
    config = cloud_config_of(ctx)
    assert json.loads(config["write_files"][0]["content"])["image"] == "el9-a"
    assert "--image el9-a" in config["runcmd"][-1] and "--tags gpu,os:el9" in config["runcmd"][-1]

"""One contract for every cloud driver, run against the in-memory fake, the real ``local`` driver and the
``libvirt`` driver on a real libvirtd (slow: it starts QEMU domains)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudpilot.clouds.base import CloudDriver, InstanceState
from cloudpilot.clouds.errors import CloudConfigError, QuotaExceeded, Retryable
from cloudpilot.clouds.fake import FakeCloudDriver
from cloudpilot.clouds.local import LocalCloudDriver
from tests.helpers.clouds import FLAVORS, SECRET, launch
from tests.helpers.libvirt import URI, blank_image, libvirtd_unavailable, storage_dir

MAX_VMS = 2
LIVE = {InstanceState.PENDING, InstanceState.RUNNING}


@pytest.fixture(params=["fake", "local", pytest.param("libvirt", marks=pytest.mark.slow)])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudDriver]:
    made: CloudDriver
    if request.param == "fake":
        made = FakeCloudDriver("fake", FLAVORS, max_vms=MAX_VMS)
    elif request.param == "local":
        made = LocalCloudDriver("local", tmp_path / "cloud", FLAVORS, max_vms=MAX_VMS)
    else:
        yield from _libvirt_driver()
        return
    yield made
    for inst in made.list():
        made.destroy(inst.instance_id)


def _libvirt_driver() -> Iterator[CloudDriver]:
    from cloudpilot.clouds.libvirt_driver import LibvirtDriver

    if (reason := libvirtd_unavailable()) is not None:
        pytest.skip(f"libvirtd cannot run here: {reason}")
    files = storage_dir()
    # A cloud name of its own: the suite lists only this run's domains, whatever else the libvirtd holds.
    made = LibvirtDriver(
        f"contract-{uuid.uuid4().hex[:8]}", URI, FLAVORS, blank_image(files), files, max_vms=MAX_VMS, accel="tcg"
    )
    try:
        yield made
    finally:
        for inst in made.list():
            made.destroy(inst.instance_id)
        made.close()
        shutil.rmtree(files, ignore_errors=True)


def test_create_is_idempotent_per_vm_id(driver: CloudDriver) -> None:
    first = driver.create(launch("vm-1"))
    again = driver.create(launch("vm-1"))
    assert again.instance_id == first.instance_id
    assert [inst.vm_id for inst in driver.list()] == ["vm-1"]


def test_list_shows_our_instances_with_their_vm_ids(driver: CloudDriver) -> None:
    a = driver.create(launch("vm-a"))
    b = driver.create(launch("vm-b", flavor="large"))
    assert a.instance_id != b.instance_id
    assert a.state in LIVE and a.vm_id == "vm-a" and a.flavor == "small"
    listed = {inst.instance_id: inst for inst in driver.list()}
    assert set(listed) == {a.instance_id, b.instance_id}
    assert listed[a.instance_id].vm_id == "vm-a"
    assert listed[b.instance_id].vm_id == "vm-b"
    assert listed[b.instance_id].flavor == "large"
    assert all(inst.created_at is not None for inst in listed.values())


def test_quota_exceeded_past_max_vms(driver: CloudDriver) -> None:
    for n in range(MAX_VMS):
        driver.create(launch(f"vm-{n}"))
    with pytest.raises(QuotaExceeded) as caught:
        driver.create(launch("one-too-many"))
    assert isinstance(caught.value, Retryable)
    # A repeated request for a VM that exists is not a new instance: the quota does not apply to it.
    assert driver.create(launch("vm-0")).vm_id == "vm-0"
    assert len(driver.list()) == MAX_VMS


def test_unknown_flavor_is_a_config_error_without_user_data(driver: CloudDriver) -> None:
    with pytest.raises(CloudConfigError) as caught:
        driver.create(launch("vm-1", flavor="huge"))
    assert "huge" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert driver.list() == []


def test_destroy_is_idempotent_and_the_instance_leaves_the_list(driver: CloudDriver) -> None:
    inst = driver.create(launch("vm-1"))
    other = driver.create(launch("vm-2"))
    driver.destroy(inst.instance_id)
    assert [i.instance_id for i in driver.list()] == [other.instance_id]
    driver.destroy(inst.instance_id)
    driver.destroy("local-000000000000")
    driver.destroy("no-such-instance")
    assert [i.instance_id for i in driver.list()] == [other.instance_id]
    # Its place in the quota is free again.
    assert driver.create(launch("vm-3")).vm_id == "vm-3"


def test_relaunch_after_destroy_is_a_new_instance(driver: CloudDriver) -> None:
    inst = driver.create(launch("vm-1"))
    driver.destroy(inst.instance_id)
    again = driver.create(launch("vm-1"))
    assert again.instance_id != inst.instance_id
    assert [i.instance_id for i in driver.list()] == [again.instance_id]

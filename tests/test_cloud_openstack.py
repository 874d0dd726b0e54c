"""The Libcloud driver with Libcloud's OpenStack driver, against a local fake of Keystone v3 and Nova."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from cloudpilot.clouds.base import TAG_MANAGED, TAG_VM_ID, InstanceState, LaunchRequest
from cloudpilot.clouds.errors import CloudAuthFailed, CloudConfigError, CloudUnavailable, QuotaExceeded
from cloudpilot.clouds.libcloud_driver import LibcloudDriver
from tests.helpers.fake_openstack import FakeOpenStack

TOKEN = "cp_0123abcd_SECRETsecret-token_value"
USER_DATA = f"#cloud-config\nwrite_files:\n  - path: /etc/cloudpilot/token\n    content: {TOKEN}\n"
PASSWORD = "demo-password"
WRONG_PASSWORD = "wrong-password"


@pytest.fixture
def fake() -> Iterator[FakeOpenStack]:
    fake = FakeOpenStack(password=PASSWORD).start()
    try:
        yield fake
    finally:
        fake.stop()


def make_driver(fake: FakeOpenStack, password: str = PASSWORD, **overrides: Any) -> LibcloudDriver:
    args: dict[str, Any] = {
        "name": "os",
        "provider": "openstack",
        "driver_args": {"key": "demo", "secret": password},
        "driver_kwargs": {
            "ex_force_auth_url": fake.url,
            "ex_force_auth_version": "3.x_password",
            "ex_tenant_name": "physics",
            "api_version": "2.2",
            "timeout": 10,
        },
        "images": {"lhcb": "img-alma9", "*": "img-unknown"},
        "flavors": {"small": "m1.small", "large": "m1.large"},
        "options": {"keypair": "ops", "network": "net-1", "security_groups": ["pilots"], "availability_zone": "az1"},
    }
    args.update(overrides)
    return LibcloudDriver(**args)


def request(vm_id: str = "vm-1", **overrides: Any) -> LaunchRequest:
    fields: dict[str, Any] = {"vm_id": vm_id, "vo": "lhcb", "flavor": "small", "user_data": USER_DATA}
    fields.update(overrides)
    return LaunchRequest(**fields)


def creates(fake: FakeOpenStack) -> int:
    return fake.requests.count(("POST", "/compute/v2.1/servers"))


def assert_no_secret(error: BaseException) -> None:
    """Neither our message nor the chained SDK errors (a logged traceback prints them all) leak."""
    text = "".join(traceback.format_exception(error))
    for secret in (TOKEN, "SECRETsecret", USER_DATA, PASSWORD):
        assert secret not in text, secret


def test_create_sends_user_data_tags_and_options(fake: FakeOpenStack) -> None:
    driver = make_driver(fake)

    created = driver.create(request(tags={"site": "cern"}))

    server = fake.servers[created.instance_id]
    assert server.user_data == USER_DATA
    assert server.metadata == {TAG_MANAGED: "true", TAG_VM_ID: "vm-1", "site": "cern"}
    assert (server.image_id, server.flavor_id) == ("img-alma9", "m1.small")
    assert server.key_name == "ops"
    assert server.networks == [{"uuid": "net-1"}]
    assert server.security_groups == [{"name": "pilots"}]
    assert server.availability_zone == "az1"
    assert (created.vm_id, created.flavor, created.state) == ("vm-1", "small", InstanceState.PENDING)
    assert created.created_at is not None


def test_list_maps_states_and_skips_what_is_not_ours(fake: FakeOpenStack) -> None:
    driver = make_driver(fake)
    ids = {vm: driver.create(request(vm, flavor="large")).instance_id for vm in ("a", "b", "c", "d", "e")}
    for vm, status in {"b": "ACTIVE", "c": "SHUTOFF", "d": "ERROR", "e": "DELETED"}.items():
        fake.servers[ids[vm]].status = status
    foreign = driver.create(request("f")).instance_id
    fake.servers[foreign].metadata = {"owner": "someone else"}

    listed = {i.vm_id: i for i in driver.list()}

    assert {vm: i.state for vm, i in listed.items()} == {
        "a": InstanceState.PENDING,
        "b": InstanceState.RUNNING,
        "c": InstanceState.STOPPED,
        "d": InstanceState.ERROR,
    }
    assert listed["b"].instance_id == ids["b"]
    assert listed["b"].flavor == "large"


def test_create_is_idempotent_by_vm_id(fake: FakeOpenStack) -> None:
    driver = make_driver(fake)

    first = driver.create(request("vm-7"))
    fake.servers[first.instance_id].status = "ACTIVE"
    again = driver.create(request("vm-7"))

    assert again.instance_id == first.instance_id
    assert again.state is InstanceState.RUNNING
    assert creates(fake) == 1
    assert len(fake.servers) == 1


def test_destroy_is_idempotent(fake: FakeOpenStack) -> None:
    driver = make_driver(fake)
    created = driver.create(request())

    driver.destroy(created.instance_id)
    driver.destroy(created.instance_id)

    assert driver.list() == []
    assert fake.requests.count(("DELETE", f"/compute/v2.1/servers/{created.instance_id}")) == 2


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (403, "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"),
        (413, "Quota exceeded for cores: Requested 4, but already used 40 of 40 cores"),
    ],
)
def test_quota_refusal_is_quota_exceeded(fake: FakeOpenStack, status: int, message: str) -> None:
    fake.fail_next_create = (status, message)

    with pytest.raises(QuotaExceeded) as caught:
        make_driver(fake).create(request())

    assert "Quota exceeded" in str(caught.value)
    assert_no_secret(caught.value)
    assert fake.servers == {}


def test_refused_credentials_are_auth_failed(fake: FakeOpenStack) -> None:
    with pytest.raises(CloudAuthFailed) as caught:
        make_driver(fake, password=WRONG_PASSWORD).create(request())

    # a traceback prints source lines too, hence the constant: the value must not appear at run time
    assert WRONG_PASSWORD not in "".join(traceback.format_exception(caught.value))
    assert_no_secret(caught.value)


def test_server_fault_is_retryable(fake: FakeOpenStack) -> None:
    fake.fail_next_create = (500, f"Unexpected API Error while handling {USER_DATA}")

    with pytest.raises(CloudUnavailable) as caught:
        make_driver(fake).create(request())

    assert "Unexpected API Error" in str(caught.value)
    assert_no_secret(caught.value)


def test_unknown_image_is_a_config_error_without_secrets(fake: FakeOpenStack) -> None:
    with pytest.raises(CloudConfigError) as caught:
        make_driver(fake).create(request(vo="atlas"))  # falls back to the "*" image, which Nova does not know

    assert "Invalid imageRef" in str(caught.value)
    assert_no_secret(caught.value)


def test_missing_image_and_flavor_are_config_errors(fake: FakeOpenStack) -> None:
    driver = make_driver(fake, images={"lhcb": "img-alma9"})

    with pytest.raises(CloudConfigError, match="no image configured for VO 'atlas'"):
        driver.create(request(vo="atlas"))
    with pytest.raises(CloudConfigError, match="flavor 'huge'"):
        driver.create(request(flavor="huge"))
    assert creates(fake) == 0


def test_option_of_another_provider_or_reserved_is_rejected(fake: FakeOpenStack) -> None:
    with pytest.raises(CloudConfigError, match="subnet"):
        make_driver(fake, options={"subnet": "subnet-1"})
    with pytest.raises(CloudConfigError, match="ex_userdata"):
        make_driver(fake, options={"ex_userdata": "#!/bin/sh"})


def test_ex_options_pass_through(fake: FakeOpenStack) -> None:
    created = make_driver(fake, options={"ex_availability_zone": "az9"}).create(request())

    assert fake.servers[created.instance_id].availability_zone == "az9"


def test_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(CloudConfigError, match="no-such-cloud"):
        LibcloudDriver("x", "no-such-cloud", {"key": "k"}, {}, {}, {})


APP_CREDENTIAL_ID = "ac-0123"
APP_CREDENTIAL_SECRET = "ac-secret-value"


@pytest.mark.parametrize(
    ("auth_version", "credentials", "method"),
    [
        ("3.x_password", {"key": "demo", "secret": PASSWORD}, "password"),
        # An application credential carries its project: its id is the key, its secret the secret.
        ("3.x_appcred", {"key": APP_CREDENTIAL_ID, "secret": APP_CREDENTIAL_SECRET}, "application_credential"),
    ],
)
def test_keystone_v3_password_and_application_credential(auth_version: str, credentials: dict, method: str) -> None:
    fake = FakeOpenStack(password=PASSWORD, app_credentials={APP_CREDENTIAL_ID: APP_CREDENTIAL_SECRET}).start()
    try:
        kwargs = {"ex_force_auth_url": fake.url, "ex_force_auth_version": auth_version, "api_version": "2.2"}
        if method == "password":
            kwargs["ex_tenant_name"] = "physics"
        driver = make_driver(fake, driver_args=credentials, driver_kwargs=kwargs)

        created = driver.create(request())

        assert [i.instance_id for i in driver.list()] == [created.instance_id]
        assert set(fake.auth_methods) == {method}
        wrong = make_driver(fake, driver_args={**credentials, "secret": WRONG_PASSWORD}, driver_kwargs=kwargs)
        with pytest.raises(CloudAuthFailed):
            wrong.list()
    finally:
        fake.stop()


def test_region_missing_from_the_catalog_is_a_config_error_naming_what_it_offers() -> None:
    fake = FakeOpenStack(password=PASSWORD, regions=("RegionOne", "RegionTwo")).start()
    try:
        kwargs = {
            "ex_force_auth_url": fake.url,
            "ex_force_auth_version": "3.x_password",
            "ex_tenant_name": "physics",
            "ex_force_service_region": "regionone",  # the case differs: a typo an operator makes
        }
        driver = make_driver(fake, driver_kwargs=kwargs)

        with pytest.raises(CloudConfigError) as caught:
            driver.create(request())

        message = str(caught.value)
        assert "region 'regionone'" in message
        assert "compute 'nova' in RegionOne, RegionTwo" in message
        assert "identity 'keystone'" in message
        assert creates(fake) == 0
        assert_no_secret(caught.value)
        # the same configuration with a region the catalog has works
        assert make_driver(fake, driver_kwargs={**kwargs, "ex_force_service_region": "RegionTwo"}).list() == []
    finally:
        fake.stop()

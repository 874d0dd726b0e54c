"""The Libcloud driver end to end against moto's EC2 server on 127.0.0.1 (a real HTTP server, real EC2 API).

boto3 (installed with moto) is only a test-side probe: it reads back from the same server what our driver
sent, e.g. the user-data.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import pytest

pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
requests = pytest.importorskip("requests")
import moto.settings  # noqa: E402
from libcloud.compute.drivers.ec2 import NAMESPACE  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from cloudpilot.clouds.base import TAG_MANAGED, TAG_VM_ID, InstanceState, LaunchRequest  # noqa: E402
from cloudpilot.clouds.errors import CloudConfigError, CloudUnavailable  # noqa: E402
from cloudpilot.clouds.libcloud_driver import LibcloudDriver  # noqa: E402
from cloudpilot.context import PilotContext, build_user_data  # noqa: E402
from tests.helpers.cloudinit import cloud_init_schema  # noqa: E402

REGION = "us-east-1"
TOKEN = "cp_abc_SECRET"
USER_DATA = (
    f'#cloud-config\nwrite_files:\n  - path: /etc/cloudpilot/pilot.json\n    content: \'{{"token": "{TOKEN}"}}\'\n'
)
ACCESS_KEY = "AKIAMOTOTESTING"
SECRET_KEY = "moto-secret-key-value"
OFFLINE_AMI = "ami-0123456789abcdef0"  # for the tests that never reach moto


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    # moto's server logs every request line, and EC2's query API puts the (base64) user-data in the URL.
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()[1]
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture(scope="module")
def ec2_client(moto_port: int) -> Any:
    # Fake credentials given explicitly, so boto3 never looks for real ones in the environment.
    return boto3.client(
        "ec2",
        endpoint_url=f"http://127.0.0.1:{moto_port}",
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture(scope="module")
def ami(ec2_client: Any) -> str:
    """One of moto's stock AMIs (listing them is slow, hence once per module; so is a reset of moto)."""
    return ec2_client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


@pytest.fixture
def ec2(ec2_client: Any, ami: str) -> Any:
    """The boto3 probe, after terminating what earlier tests left running."""
    ids = [i["InstanceId"] for i in live_instances(ec2_client)]
    if ids:
        ec2_client.terminate_instances(InstanceIds=ids)
    return ec2_client


def live_instances(client: Any) -> list[dict[str, Any]]:
    reservations = client.describe_instances()["Reservations"]
    return [i for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"]


def make_driver(port: int, ami: str, **overrides: Any) -> LibcloudDriver:
    args: dict[str, Any] = {
        "name": "moto",
        "provider": "ec2",
        "driver_args": {"key": ACCESS_KEY, "secret": SECRET_KEY},
        "driver_kwargs": {"host": "127.0.0.1", "port": port, "region": REGION},
        "images": {"*": ami},
        "flavors": {"small": "t2.micro"},
        "ec2_moto_compat": True,
    }
    args.update(overrides)
    return LibcloudDriver(**args)


def request(vm_id: str = "vm-1", **overrides: Any) -> LaunchRequest:
    fields: dict[str, Any] = {"vm_id": vm_id, "vo": "lhcb", "flavor": "small", "user_data": USER_DATA}
    fields.update(overrides)
    return LaunchRequest(**fields)


def assert_no_secret(error: BaseException) -> None:
    """Neither our message nor the chained SDK errors (a logged traceback prints them all) leak."""
    text = "".join(traceback.format_exception(error))
    encoded = base64.b64encode(USER_DATA.encode()).decode()
    for secret in (TOKEN, "SECRET", USER_DATA, encoded, quote(encoded, safe=""), encoded[:40], SECRET_KEY):
        assert secret not in text, secret


def test_create_list_destroy_roundtrip(moto_port: int, ec2: Any, ami: str) -> None:
    driver = make_driver(moto_port, ami)

    created = driver.create(request(tags={"vo": "lhcb"}))

    assert created.vm_id == "vm-1"
    assert created.flavor == "small"
    assert created.state in (InstanceState.PENDING, InstanceState.RUNNING)
    user_data = ec2.describe_instance_attribute(InstanceId=created.instance_id, Attribute="userData")
    assert base64.b64decode(user_data["UserData"]["Value"]).decode() == USER_DATA
    described = ec2.describe_instances(InstanceIds=[created.instance_id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags[TAG_MANAGED] == "true"
    assert tags[TAG_VM_ID] == "vm-1"
    assert tags["vo"] == "lhcb"
    assert described["InstanceType"] == "t2.micro"
    assert described["ImageId"] == ami

    [listed] = driver.list()
    assert listed.instance_id == created.instance_id
    assert listed.vm_id == "vm-1"
    assert listed.flavor == "small"
    assert listed.state in (InstanceState.PENDING, InstanceState.RUNNING)
    assert listed.created_at is not None

    driver.destroy(created.instance_id)
    assert driver.list() == []
    driver.destroy(created.instance_id)  # already terminated
    driver.destroy("i-0123456789abcdef0")  # never existed


def test_create_is_idempotent_by_vm_id(moto_port: int, ec2: Any, ami: str) -> None:
    driver = make_driver(moto_port, ami)

    first = driver.create(request("vm-7"))
    again = driver.create(request("vm-7"))
    other = driver.create(request("vm-8"))

    assert again.instance_id == first.instance_id
    assert other.instance_id != first.instance_id
    assert len(live_instances(ec2)) == 2
    assert sorted(i.vm_id or "" for i in driver.list()) == ["vm-7", "vm-8"]


def test_relaunch_after_destroy_is_a_new_instance(moto_port: int, ec2: Any, ami: str) -> None:
    driver = make_driver(moto_port, ami)
    first = driver.create(request("vm-3"))
    driver.destroy(first.instance_id)

    second = driver.create(request("vm-3"))

    assert second.instance_id != first.instance_id
    assert [(i.instance_id, i.vm_id) for i in driver.list()] == [(second.instance_id, "vm-3")]


def test_list_ignores_instances_that_are_not_ours(moto_port: int, ec2: Any, ami: str) -> None:
    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t2.micro")
    driver = make_driver(moto_port, ami)
    driver.create(request("vm-2"))

    assert [i.vm_id for i in driver.list()] == ["vm-2"]


def test_unknown_image_is_a_config_error_without_secrets(
    moto_port: int, ec2: Any, ami: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto's documented switch (MOTO_ENABLE_AMI_VALIDATION, read once at import) for the in-process server
    monkeypatch.setattr(moto.settings, "ENABLE_AMI_VALIDATION", True)
    driver = make_driver(moto_port, ami, images={"lhcb": "ami-00000000deadbeef0"})

    with pytest.raises(CloudConfigError) as caught:
        driver.create(request())

    assert "InvalidAMIID.NotFound" in str(caught.value)
    assert "ami-00000000deadbeef0" in str(caught.value)
    assert_no_secret(caught.value)
    assert driver.list() == []


def test_unknown_subnet_is_a_config_error_without_secrets(moto_port: int, ec2: Any, ami: str) -> None:
    driver = make_driver(moto_port, ami, options={"subnet": "subnet-00000000deadbeef0"})

    with pytest.raises(CloudConfigError) as caught:
        driver.create(request())

    assert "subnet-00000000deadbeef0" in str(caught.value)
    assert_no_secret(caught.value)


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(CloudConfigError, match="flavour"):
        make_driver(1, OFFLINE_AMI, options={"flavour": "x"})


def test_unconfigured_flavor_is_a_config_error(moto_port: int, ec2: Any, ami: str) -> None:
    with pytest.raises(CloudConfigError, match="flavor 'huge'"):
        make_driver(moto_port, ami).create(request(flavor="huge"))


def test_unreachable_endpoint_is_retryable_and_leaks_nothing() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    driver = make_driver(
        closed_port, OFFLINE_AMI, driver_kwargs={"host": "127.0.0.1", "port": closed_port, "timeout": 5}
    )

    with pytest.raises(CloudUnavailable) as caught:
        driver.create(request())
    assert_no_secret(caught.value)


class EchoingEC2(BaseHTTPRequestHandler):
    """An EC2 endpoint that lists no instances and fails every other call, quoting the request it got.

    Our driver sends the user-data (base64, form-encoded) in the POST body: a cloud or proxy that echoes it in an
    error must not get it into our messages.
    """

    NO_INSTANCES = f'<DescribeInstancesResponse xmlns="{NAMESPACE}"><reservationSet/></DescribeInstancesResponse>'
    ERROR = "<Response><Errors><Error><Code>InternalError</Code><Message>{}</Message></Error></Errors></Response>"

    def do_POST(self) -> None:
        form = self.rfile.read(int(self.headers["Content-Length"])).decode()
        if "Action=DescribeInstances" in form:
            status, body = 200, self.NO_INSTANCES
        else:
            status, body = 503, self.ERROR.format(escape(f"internal error while serving {self.path}?{form}"))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_cloud_error_echoing_the_request_is_redacted() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingEC2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        driver = make_driver(port, OFFLINE_AMI, driver_kwargs={"host": "127.0.0.1", "port": port, "timeout": 5})
        with pytest.raises(CloudUnavailable) as caught:
            driver.create(request())
    finally:
        server.shutdown()
        server.server_close()

    assert "InternalError" in str(caught.value)
    assert "Action=RunInstances" in str(caught.value)  # the echo itself survives, minus the user-data
    assert "UserData=[redacted]" in str(caught.value)
    assert_no_secret(caught.value)


def test_moto_compat_is_for_ec2_only() -> None:
    with pytest.raises(CloudConfigError, match="ec2_moto_compat"):
        LibcloudDriver("x", "openstack", {"key": "u", "secret": "p"}, {}, {}, {}, ec2_moto_compat=True)


def test_our_user_data_reaches_the_instance_and_is_valid_cloud_config(
    moto_port: int, ec2: Any, ami: str, tmp_path: Path
) -> None:
    context = PilotContext(
        server_url="http://127.0.0.1:8080", vm_id="vm-ud", vo="lhcb", pilot_token="cp_0123abcd_SeCrEt-token", cores=1
    )
    user_data = build_user_data(context)
    created = make_driver(moto_port, ami).create(request("vm-ud", user_data=user_data))
    answer = ec2.describe_instance_attribute(InstanceId=created.instance_id, Attribute="userData")
    read_back = base64.b64decode(answer["UserData"]["Value"]).decode()
    assert read_back == user_data
    result = cloud_init_schema(tmp_path, read_back)
    assert result.returncode == 0, result.stdout + result.stderr

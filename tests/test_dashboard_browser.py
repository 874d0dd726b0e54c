"""The dashboard in a real headless Chromium (Selenium) against a real server with local clouds: logging in as a
user, an admin and a site admin, live counts, a growing log tail, draining a VM, refusals (another user's job,
another site, a form without its CSRF token), no console error and no request to another host. Screenshots of
every view land in the test's tmp dir (and in $CLOUDPILOT_SCREENSHOTS if set)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.conftest import ON_CI
from tests.helpers.pilots import wait_for
from tests.helpers.server import RunningServer, ServerFactory

PY = sys.executable
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
LOG_JOB = "import time\nfor i in range(60):\n    print('line', i, flush=True)\n    time.sleep(0.4)\n"

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webelement import WebElement
except ImportError:  # the dev extra is not installed
    webdriver = None  # type: ignore[assignment]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    missing = [what for what, found in (("chromium", CHROMIUM), ("chromedriver", DRIVER), ("selenium", webdriver))
               if not found]  # fmt: skip
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; pip install selenium)"
        if ON_CI:
            pytest.fail(message + ": on CI the browser tests must run")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--disable-gpu",
        "--no-first-run",
    ):
        options.add_argument(arg)  # fmt: skip
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def dashboard_config() -> ServerConfig:
    small = {"small": {"cores": 1, "memory_mb": 1024}}
    clouds = {
        "a1": {"driver": "local", "site": "siteA", "grace_secs": 1, "max_vms": 2, "flavors": small,
               "start_rate_per_minute": 60},
        "b1": {"driver": "local", "site": "siteB", "max_vms": 1, "flavors": small, "price_per_core_hour": 1.0,
               "start_rate_per_minute": 60},
    }  # fmt: skip
    return ServerConfig.model_validate(
        {
            "clouds": clouds,
            "sites": {"siteA": {"pledges": {"lhcb": 2}}},
            "policy": {"idle_seconds": 120, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": 120, "lost_after_seconds": 30},
            "lease": {"seconds": 10, "heartbeat_seconds": 1, "reaper_interval_seconds": 0.5},
        }
    )


class Dashboard:
    """The browser with the server's address, screenshots and the checks every page gets."""

    def __init__(self, driver: webdriver.Chrome, server: RunningServer, shots: Path) -> None:
        self.driver, self.server, self.shots = driver, server, shots
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.server.url + path)

    def text(self, css: str) -> str:
        for _ in range(5):  # a live region may be replaced between finding an element and reading it
            try:
                found = self.driver.find_elements(By.CSS_SELECTOR, css)
                return found[0].text if found else ""
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept going stale")

    def element(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def login(self, token: str) -> None:
        self.open("/ui/login")
        self.driver.find_element(By.ID, "token").send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait_for(lambda: self.driver.current_url.endswith("/ui/"), 10, "the overview after logging in")

    def logout(self) -> None:
        self.driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
        wait_for(lambda: self.driver.current_url.endswith("/ui/login"), 10, "the login page after logging out")

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        extra = os.environ.get("CLOUDPILOT_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)

    def console_errors(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """SEVERE console entries since the last call, but those naming an expected refusal (``allowed``)."""
        entries = self.driver.get_log("browser")
        return [e["message"] for e in entries
                if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]  # fmt: skip

    def foreign_requests(self) -> list[str]:
        """URLs the browser asked for over the network since the last call that are not on the server."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        assert any(u.startswith(self.server.url + "/ui/static/") for u in urls), "the log recorded no request"
        # The browser's own pages (chrome://) are no network requests; everything on the network is ours.
        network = [u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
        return [u for u in network if not u.startswith(self.server.url + "/")]


def job_count(ui: Dashboard, state: str) -> int:
    text = ui.text(f'td[data-vo="lhcb"][data-state="{state}"]')
    return int(text) if text.isdigit() else -1


def test_dashboard_for_a_user_an_admin_and_a_site_admin(
    make_server: ServerFactory, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    server = make_server(dashboard_config())
    ui = Dashboard(browser, server, tmp_path / "screenshots")
    alice_token = server.token(Role.USER, "alice", vo="lhcb")
    alice = server.client(alice_token)
    bob = server.client(server.token(Role.USER, "bob", vo="lhcb"))
    (bobs_job,) = bob.post("/api/v1/jobs", json={"executable": PY, "arguments": ["-c", "pass"]}).json()["ids"]

    # A user: the login page, then the overview whose counts change as jobs finish.
    ui.open("/ui/login")
    ui.shot("login")
    ui.login(alice_token)
    assert job_count(ui, "done") == 0
    quick = {"executable": PY, "arguments": ["-c", "print('hi')"], "requirements": {"wall_seconds": 60}}
    ids = alice.post("/api/v1/jobs", json=[quick, quick, quick]).json()["ids"]
    wait_for(lambda: job_count(ui, "waiting") >= 1 or job_count(ui, "done") >= 1, 15, "the new jobs counted")
    wait_for(lambda: job_count(ui, "done") == 3, 120, "the overview counting 3 done jobs (live)")
    ui.shot("overview-user")

    # A job's page: its log tail grows while it runs.
    log_job = {
        "executable": PY,
        "arguments": ["-u", "-c", LOG_JOB],
        "name": "log-tail",
        "requirements": {"wall_seconds": 120},
    }
    (log_id,) = alice.post("/api/v1/jobs", json=log_job).json()["ids"]
    ui.open(f"/ui/jobs/{log_id}")
    wait_for(lambda: ui.text("#log-tail").count("line") >= 2, 90, "the first lines of job.log")
    first = ui.text("#log-tail").count("line")
    wait_for(lambda: ui.text("#log-tail").count("line") > first + 3, 30, "the log tail growing (live)")
    assert ui.text("#job-state") == "running"
    ui.shot("job")
    ui.open("/ui/jobs?state=done")
    assert {int(e.get_attribute("data-job")) for e in browser.find_elements(By.CSS_SELECTOR, "tr[data-job]")} == set(
        ids
    )
    ui.shot("jobs")
    for view in ("clouds", "accounting", "clusters"):
        ui.open(f"/ui/{view}")
        assert browser.find_elements(By.TAG_NAME, "h1")[0].text.lower() == view
        ui.shot(view)
    assert ui.console_errors() == []

    # Refusals: another user's job, and a form without its CSRF token (the session stays).
    ui.open(f"/ui/jobs/{bobs_job}")
    assert "belongs to another user" in ui.text("#error-message")
    ui.open("/ui/")
    browser.execute_script("document.querySelector('form.logout input[name=csrf]').remove();"
                           "document.querySelector('form.logout').submit();")  # fmt: skip
    wait_for(lambda: "security token" in ui.text("#error-message"), 10, "the form refused without its CSRF token")
    ui.open("/ui/")
    assert browser.current_url.endswith("/ui/")  # still logged in
    assert ui.console_errors(allowed=("status of 403",)) == []
    ui.logout()
    ui.open(f"/ui/jobs/{log_id}")
    assert browser.current_url.endswith("/ui/login")  # logged out: the session is gone

    # An admin sees every VO's jobs and every cloud.
    ui.login(server.token(Role.ADMIN, "root"))
    ui.open("/ui/")
    assert job_count(ui, "done") >= 4  # bob's too
    ui.shot("overview-admin")
    ui.open("/ui/clouds/a1")
    ui.shot("cloud")
    ui.open("/ui/sites/siteA")
    assert ui.text("#pledges")
    ui.logout()

    # A site admin drains a VM of their site and sees it draining; another site is out of reach.
    ui.login(server.token(Role.SITE, "ops", site="siteA"))
    ui.open("/ui/sites")
    assert browser.current_url.endswith("/ui/sites/siteA")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#site-vms tr[data-vm]"), 60, "a VM of siteA listed")
    vm_id = ui.element("#site-vms tr[data-vm]").get_attribute("data-vm")
    ui.element(f'#site-vms tr[data-vm="{vm_id}"] input[name=minutes]').click()  # focus: the live region holds
    minutes = ui.element(f'#site-vms tr[data-vm="{vm_id}"] input[name=minutes]')
    minutes.clear()
    minutes.send_keys("30")
    ui.element(f'#site-vms tr[data-vm="{vm_id}"] button').click()
    wait_for(lambda: "draining by" in ui.text(f'#site-vms tr[data-vm="{vm_id}"]'), 10, "the VM shown draining")
    assert vm_id in ui.text("#shutdowns")
    ui.shot("site")
    ui.open(f"/ui/vms/{vm_id}")
    assert ui.text("#vm-state")
    ui.shot("vm")
    ui.open("/ui/sites/siteB")
    assert "not siteB" in ui.text("#error-message") or "siteA, not siteB" in ui.text("#error-message")
    ui.open("/ui/sites/siteA")
    browser.execute_script("const f = document.querySelector('#drain-cloud');"
                           "f.action = '/ui/sites/siteB/shutdowns'; f.submit();")  # fmt: skip
    wait_for(lambda: "siteB" in ui.text("#error-message"), 10, "a drain of another site refused")
    statuses = server.services.sites.sites.active_shutdowns("siteB")
    assert statuses == []
    ui.open(f"/ui/jobs/{log_id}")
    assert "token" in ui.text("#error-message")  # a site admin sees no jobs
    assert ui.console_errors(allowed=("status of 403",)) == []
    assert ui.foreign_requests() == []
    assert len(list(ui.shots.glob("*.png"))) >= 10

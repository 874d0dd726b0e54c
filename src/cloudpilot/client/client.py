"""``CloudpilotClient``: the user's side of the REST API (docs/rest-api.md) over a synchronous httpx client."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import httpx

from cloudpilot.client.errors import ClientError, ServerUnavailable, WaitTimedOut, error_for_status
from cloudpilot.client.jobfile import check_input_files, plan_submission
from cloudpilot.client.sandbox import extract_safely, packed
from cloudpilot.domain.job_states import FINAL_STATES, JobState
from cloudpilot.domain.vms import VMState

API = "/api/v1"
PAGE_SIZE = 1000
# Below this many unfinished jobs, ``wait`` asks for each; above, it pages through the caller's list instead.
FEW_JOBS = 20

ProgressCallback = Callable[[dict[str, int]], None]


@dataclass(frozen=True)
class Submission:
    ids: list[int]
    warnings: list[str]


class CloudpilotClient:
    """A user's (or admin's) connection to one cloudpilot server.

    Every method raises a :class:`~cloudpilot.client.errors.ClientError` subclass on failure, never an httpx
    error. ``transport`` lets tests hand in an ``httpx.MockTransport`` or an ASGI transport.
    """

    def __init__(
        self, url: str, token: str, timeout: float = 30, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        try:
            self._http = httpx.Client(
                base_url=self.url,
                headers={"Authorization": f"Bearer {token}", "User-Agent": "cloudpilot-client"},
                timeout=timeout,
                transport=transport,
            )
        except httpx.InvalidURL as exc:
            raise ClientError(f"invalid server URL {url!r}: {exc}") from exc

    # -- plumbing -------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CloudpilotClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn httpx's exceptions into ours; the token is in a header, so it never reaches a message."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(
                f"the server at {self.url} did not answer {what} within {self.timeout:g} s"
            ) from exc
        except httpx.UnsupportedProtocol as exc:
            raise ClientError(f"cannot use server URL {self.url!r}: {exc}") from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach the server at {self.url} ({what}): {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ClientError(f"{what} failed: {exc}") from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._translate(f"{method} {API}{path}"):
            response = self._http.request(method, API + path, **kwargs)
        _raise_for_error(response)
        return response

    # -- jobs -----------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "version": ...}``; needs no valid token."""
        return self._request("GET", "/health").json()

    def submit(self, specs_or_document: object, base_dir: Path = Path(".")) -> list[int]:
        """Submit what a job file holds (a job, a list of jobs, or a parametric job); return the ids in order
        (:meth:`submission` also gives the server's warnings)."""
        return self.submission(specs_or_document, base_dir).ids

    def submission(self, specs_or_document: object, base_dir: Path = Path(".")) -> Submission:
        """Submit what a job file holds; the ids in order, and the server's warnings (jobs no configured cloud
        can run: accepted all the same, they wait for a pilot that offers what they need).

        Each distinct set of ``input_files`` (relative to ``base_dir``) is packed and uploaded once, and its
        sandbox id set as the jobs' ``input_sandbox`` (jobs that already name an ``input_sandbox`` are sent as
        they are). The document is checked and every input file looked for before anything is sent.
        """
        plan = plan_submission(specs_or_document)
        for names in plan.sandboxes:
            check_input_files(base_dir, names)
        for names, jobs in plan.sandboxes.items():
            with packed(base_dir, names) as archive:
                sandbox_id = self.upload_sandbox(archive)
            for job in jobs:
                job["input_sandbox"] = sandbox_id
        answer = self._request("POST", "/jobs", json=plan.body).json()
        return Submission(list(answer["ids"]), list(answer.get("warnings", [])))

    def upload_sandbox(self, archive: IO[bytes] | bytes) -> str:
        """Upload a gzipped tar; return its content id ``sha256:<hex>``."""
        headers = {"Content-Type": "application/octet-stream"}
        return self._request("POST", "/sandboxes", content=archive, headers=headers).json()["id"]

    def iter_jobs(
        self, state: JobState | str | None = None, after_id: int = 0, name: str | None = None, page: int = PAGE_SIZE
    ) -> Iterator[dict[str, Any]]:
        """The caller's jobs with ids above ``after_id``, oldest first, a page at a time; ``name``: a glob
        (``*``, ``?``; case-insensitive) or an exact name."""
        while True:
            params: dict[str, Any] = {"limit": page, "after_id": after_id}
            if state is not None:
                params["state"] = str(state)
            if name is not None:
                params["name"] = name
            page = self._request("GET", "/jobs", params=params).json()
            yield from page["jobs"]
            if page.get("next_after_id") is None:
                return
            after_id = page["next_after_id"]

    def jobs(
        self, state: JobState | str | None = None, name: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The caller's jobs (an admin's: everyone's), oldest first, following the pagination; the first
        ``limit`` only when given."""
        page = PAGE_SIZE if limit is None else max(1, min(limit, PAGE_SIZE))
        return list(itertools.islice(self.iter_jobs(state, name=name, page=page), limit))

    def job(self, job_id: int) -> dict[str, Any]:
        """One job with its ``history``."""
        return self._request("GET", f"/jobs/{job_id}").json()

    def log_tail(self, job_id: int) -> dict[str, Any]:
        """The latest tail of the job's ``job.log`` its pilot sent: ``{job_id, state, attempt, tail, updated_at}``."""
        return self._request("GET", f"/jobs/{job_id}/log").json()

    def waiting_reasons(self) -> list[dict[str, Any]]:
        """The caller's waiting jobs grouped by why they wait: ``{reason, jobs, example_job_id}``, most first."""
        return list(self._request("GET", "/jobs/waiting").json()["reasons"])

    def summary(self) -> dict[str, int]:
        """How many of the caller's jobs are in each state."""
        return self._request("GET", "/jobs/summary").json()["counts"]

    def kill(self, job_id: int) -> dict[str, Any]:
        """Kill a job that is not final yet; :class:`ConflictError` if it is."""
        return self._request("POST", f"/jobs/{job_id}/kill").json()

    def resubmit(self, job_ids: Iterable[int]) -> list[int]:
        """New jobs from final jobs' specs and input sandboxes; their ids, in the order given."""
        return list(self._request("POST", "/jobs/resubmit", json={"ids": list(job_ids)}).json()["ids"])

    def output(self, job_id: int, dest: Path) -> list[Path]:
        """Download a job's output sandbox and extract it into ``dest``; return the files written."""
        path = f"/jobs/{job_id}/output"
        with tempfile.TemporaryFile() as archive:
            with self._translate(f"GET {API}{path}"), self._http.stream("GET", API + path) as response:
                if response.is_error:
                    response.read()
                    _raise_for_error(response)
                for chunk in response.iter_bytes():
                    archive.write(chunk)
            archive.seek(0)
            return extract_safely(archive, dest)

    def wait(
        self,
        ids: Iterable[int] | None = None,
        poll: float = 1.0,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, int]:
        """Poll until every job in ``ids`` (default: all the caller's jobs) is final; return the counts per state.

        ``on_progress`` gets the counts after every poll. Raises :class:`WaitTimedOut` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watched = None if ids is None else sorted(set(ids))
        final: dict[int, str] = {}  # a final state never changes, so those jobs are not asked about again
        while True:
            counts = self.summary() if watched is None else self._counts_of(watched, final)
            if on_progress is not None:
                on_progress(counts)
            if not any(counts.get(s.value, 0) for s in JobState if not s.is_final):
                return counts
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                left = sum(counts.get(s.value, 0) for s in JobState if not s.is_final)
                raise WaitTimedOut(f"{left} jobs are not final after {timeout:g} s", counts)
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - now)))

    def _counts_of(self, ids: list[int], final: dict[int, str]) -> dict[str, int]:
        pending = [i for i in ids if i not in final]
        current: dict[int, str] = {}
        if len(pending) <= FEW_JOBS:
            current = {i: self.job(i)["state"] for i in pending}
        else:
            wanted, last = set(pending), pending[-1]
            for job in self.iter_jobs(after_id=pending[0] - 1):
                if job["id"] > last:
                    break
                if job["id"] in wanted:
                    current[job["id"]] = job["state"]
            for missing in wanted - current.keys():
                current[missing] = self.job(missing)["state"]  # raises NotFound/Forbidden with the server's words
        counts = {s.value: 0 for s in JobState}
        for job_id, state in current.items():
            if JobState(state) in FINAL_STATES:
                final[job_id] = state
            counts[state] += 1
        for job_id in ids:
            if job_id in final and job_id not in current:
                counts[final[job_id]] += 1
        return counts

    # -- clouds and VMs -------------------------------------------------------------------------------------

    def clouds(self) -> list[dict[str, Any]]:
        """The configured clouds: name, driver, flavors, max_vms, price_per_core_hour, site and VMs per state."""
        return list(self._request("GET", "/clouds").json()["clouds"])

    def vms(self, state: VMState | str | None = None) -> list[dict[str, Any]]:
        """Every VM (admin only), oldest first; only those in ``state`` when given."""
        params = {} if state is None else {"state": str(state)}
        return list(self._request("GET", "/vms", params=params).json()["vms"])

    def vm(self, vm_id: str) -> dict[str, Any]:
        """One VM with its ``history`` of transitions (admin only)."""
        return self._request("GET", f"/vms/{_segment(vm_id)}").json()

    def stop_vm(self, vm_id: str) -> dict[str, Any]:
        """Stop a VM (admin only): it is halted now and destroyed by the VM monitor's next cycle."""
        return self._request("POST", f"/vms/{_segment(vm_id)}/stop").json()

    # -- sites ----------------------------------------------------------------------------------------------

    def sites(self) -> list[str]:
        """Sites this token may administer (every site for an admin)."""
        return list(self._request("GET", "/sites").json()["sites"])

    def site(self, site: str) -> dict[str, Any]:
        """A site's clouds, pledges, running cores per VO, disabled VOs and pending shutdowns."""
        return self._request("GET", f"/sites/{_segment(site)}").json()

    def schedule_shutdown(
        self,
        site: str,
        *,
        cloud: str | None = None,
        vm_id: str | None = None,
        deadline: float | str | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        """Schedule the shutdown of a VM, a cloud or the whole site (``deadline``: UNIX seconds or ISO 8601)."""
        body = {"cloud": cloud, "vm_id": vm_id, "deadline": deadline, "reason": reason}
        return self._request("POST", f"/sites/{_segment(site)}/shutdowns", json=body).json()

    def cancel_shutdown(self, site: str, shutdown_id: int) -> dict[str, Any]:
        return self._request("DELETE", f"/sites/{_segment(site)}/shutdowns/{shutdown_id}").json()

    def set_vo_enabled(self, site: str, vo: str, enabled: bool, reason: str = "") -> dict[str, Any]:
        body = {"enabled": enabled, "reason": reason}
        return self._request("PUT", f"/sites/{_segment(site)}/vos/{_segment(vo)}", json=body).json()

    def set_capacity(self, cloud: str, max_vms: int | None) -> dict[str, Any]:
        """Change a cloud's max_vms now (``None``: back to the configuration)."""
        return self._request("PUT", f"/clouds/{_segment(cloud)}/capacity", json={"max_vms": max_vms}).json()

    # -- clusters -------------------------------------------------------------------------------------------

    def create_cluster(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Instantiate a cluster definition (docs/clusters.md); return the cluster with its services."""
        return self._request("POST", "/clusters", json=definition).json()

    def clusters(self) -> list[dict[str, Any]]:
        """The caller's clusters (an admin's: all), oldest first."""
        return list(self._request("GET", "/clusters").json()["clusters"])

    def cluster(self, cluster_id: int) -> dict[str, Any]:
        """One cluster: each service's desired size, readiness and instances with their states."""
        return self._request("GET", f"/clusters/{int(cluster_id)}").json()

    def scale_cluster(self, cluster_id: int, service: str, instances: int) -> dict[str, Any]:
        """Ask for ``instances`` of ``service`` (422 outside its min and max)."""
        path = f"/clusters/{int(cluster_id)}/services/{_segment(service)}"
        return self._request("PATCH", path, json={"instances": instances}).json()

    def delete_cluster(self, cluster_id: int) -> dict[str, Any]:
        """Tear a cluster down (last service first); the cluster, now ``deleting``."""
        return self._request("DELETE", f"/clusters/{int(cluster_id)}").json()

    # -- image lists (docs/images.md) -----------------------------------------------------------------------

    def images(self) -> dict[str, Any]:
        """``{"enforced": bool, "images": [...]}``: every image held, revoked or mapped, with its state and why."""
        return self._request("GET", "/images").json()

    def image(self, identifier: str) -> dict[str, Any]:
        return self._request("GET", f"/images/{_segment(identifier)}").json()

    def subscribe_images(
        self,
        url: str,
        endorser_key: str,
        signature_url: str | None = None,
        endorser_name: str | None = None,
        refresh_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Subscribe to the list at ``url`` signed by ``endorser_key`` (PEM or raw base64); 422 with the reason
        when the server refuses it."""
        body = {
            "url": url,
            "endorser_key": endorser_key,
            "signature_url": signature_url,
            "endorser_name": endorser_name,
            "refresh_seconds": refresh_seconds,
        }
        given = {k: v for k, v in body.items() if v is not None}
        return self._request("POST", "/images/subscriptions", json=given).json()

    def image_subscriptions(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/images/subscriptions").json()["subscriptions"])

    def refresh_images(self, subscription_id: int) -> dict[str, Any]:
        """Fetch a subscribed list again now (422 with the reason if the new one is refused)."""
        return self._request("POST", f"/images/subscriptions/{int(subscription_id)}/refresh").json()

    def unsubscribe_images(self, subscription_id: int) -> dict[str, Any]:
        return self._request("DELETE", f"/images/subscriptions/{int(subscription_id)}").json()

    def revoke_image(self, identifier: str, reason: str = "") -> dict[str, Any]:
        """Revoke an image: never booted again; its running VMs drain (``drained``: their ids)."""
        return self._request("POST", f"/images/{_segment(identifier)}/revoke", json={"reason": reason}).json()

    def reinstate_image(self, identifier: str) -> dict[str, Any]:
        return self._request("POST", f"/images/{_segment(identifier)}/reinstate").json()

    # -- tokens ---------------------------------------------------------------------------------------------

    def create_token(self, role: str, name: str, vo: str | None = None, site: str | None = None) -> str:
        """Issue a token (admin only); return the secret, which the server shows only this once."""
        body = {"role": str(role), "name": name, "vo": vo, "site": site}
        return self._request("POST", "/tokens", json={k: v for k, v in body.items() if v is not None}).json()["token"]

    def tokens(self, role: str | None = None, include_inactive: bool = False) -> list[dict[str, Any]]:
        """Tokens without their secrets (admin only), oldest first; revoked and expired ones too if asked."""
        params: dict[str, str] = {"all": str(include_inactive).lower()}
        if role is not None:
            params["role"] = str(role)
        return list(self._request("GET", "/tokens", params=params).json()["tokens"])

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a token (admin only); it is refused from then on."""
        return self._request("DELETE", f"/tokens/{_segment(token_id)}").json()

    # -- accounting -----------------------------------------------------------------------------------------
    # ``since``/``until``: UNIX seconds or ISO 8601 (UTC without a zone); records that ended in [since, until).

    def accounting_vms(
        self, since: float | str | None = None, until: float | str | None = None, **filters: str | None
    ) -> list[dict[str, Any]]:
        """VM usage records visible to the caller (``filters``: site, vo, cloud)."""
        params = _accounting_params(since, until, **filters)
        return list(self._request("GET", "/accounting/vms", params=params).json()["records"])

    def accounting_jobs(
        self, since: float | str | None = None, until: float | str | None = None, **filters: str | None
    ) -> list[dict[str, Any]]:
        """Job usage records visible to the caller (``filters``: site, vo, cloud)."""
        params = _accounting_params(since, until, **filters)
        return list(self._request("GET", "/accounting/jobs", params=params).json()["records"])

    def accounting_report(
        self, by: str = "vo", since: float | str | None = None, until: float | str | None = None
    ) -> dict[str, Any]:
        """Totals per group of ``by`` (comma-separated vo, site, cloud) and core-hours per VO over time."""
        params = _accounting_params(since, until, by=by)
        return self._request("GET", "/accounting/report", params=params).json()

    def accounting_apel(
        self, since: float | str | None = None, until: float | str | None = None, **filters: str | None
    ) -> str:
        """The APEL cloud usage message (v0.4) of the VM records (``filters``: site, vo)."""
        return self._request("GET", "/accounting/apel", params=_accounting_params(since, until, **filters)).text


def _accounting_params(since: float | str | None, until: float | str | None, **more: str | None) -> dict[str, str]:
    given = {"since": since, "until": until, **more}
    return {k: str(v) for k, v in given.items() if v is not None}


def _segment(value: str) -> str:
    """``value`` as one path segment: a ``/`` or ``?`` in an id cannot reach another endpoint."""
    return quote(str(value), safe="")


def _raise_for_error(response: httpx.Response) -> None:
    """Raise the error class of the status, with the server's ``{"error": {code, message, field}}`` when given."""
    if not response.is_error:
        return
    code = field = None
    message = ""
    try:
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            code, message, field = error.get("code"), str(error.get("message") or ""), error.get("field")
    except ValueError:
        pass
    if code == "no_endpoint":  # a wrong URL or path prefix: name the whole URL tried
        request = response.request
        message = f"{request.method} {request.url.copy_with(query=None)} is not a cloudpilot endpoint (HTTP 404): "
        message += "is the server URL right?"
    if not message:
        # Not a cloudpilot error body (a proxy, a load balancer, a wrong URL): say who was asked and what came back.
        text = response.text.strip().replace("\n", " ")[:200]
        request = response.request
        message = f"{request.method} {request.url} answered HTTP {response.status_code} {response.reason_phrase}"
        message += f": {text}" if text else " (is the server URL right?)"
    raise error_for_status(response.status_code)(message, status=response.status_code, code=code, field=field)

"""Image lists' use cases: subscribe to an endorser's list, refresh it, revoke an image (its VMs drain), and
tell the provisioner, ``/clouds`` and a waiting job which images may boot where and why not (docs/images.md).

The rule: once image lists are in force — a cloud declares ``endorsed_images`` or ``register_images``, or the
server holds a subscription — only endorsed images boot, on every cloud. An image is endorsed while a held
list that passed verification has it, the list has not expired, the site has not revoked it and (where the
server fetched it) its file matched the list.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudpilot.config import ServerConfig
from cloudpilot.config.clouds import LocalCloudConfig
from cloudpilot.domain.auth import Principal, Role
from cloudpilot.domain.errors import IllegalTransition
from cloudpilot.domain.images import (
    NOT_ENFORCED,
    CloudImages,
    ImageCatalog,
    ImageState,
    ListedImage,
    cloud_images,
    image_state,
    iso,
    parse_image_entry,
)
from cloudpilot.domain.jobs import Job, JobState
from cloudpilot.domain.provisioning import Action, CloudView, DrainVM, WorkClass
from cloudpilot.domain.vms import VMState
from cloudpilot.images.errors import FetchFailed, ImageListRefused, KeyFileError, Refusal
from cloudpilot.images.fetch import FetchPolicy, fetch_bytes, fetch_image, signature_url
from cloudpilot.images.signing import fingerprint, parse_public_key, public_key_pem
from cloudpilot.images.trust import VerifiedList, verify_list
from cloudpilot.policy.budget import image_for
from cloudpilot.services.auth import require
from cloudpilot.services.errors import BadInput
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.images import HeldList, ImageRepository, Subscription
from cloudpilot.store.vms import VMRepository

log = logging.getLogger("cloudpilot.images")

DEFAULT_REFRESH_SECONDS = 3600.0
DRAINABLE = frozenset({VMState.BOOTING, VMState.RUNNING})


class ListRefused(BadInput):
    """A list (or an image) verification refused: 422 with the reason and the field at fault."""

    def __init__(self, exc: ImageListRefused) -> None:
        super().__init__(str(exc), exc.field)
        self.reason = exc.reason


@dataclass(frozen=True, slots=True)
class BootChoice:
    """The cloud's image id to boot and the endorsed image it is (with its tags), or why nothing may boot."""

    image_id: str | None = None
    identifier: str | None = None
    tags: frozenset[str] = frozenset()
    refused: str = ""


@dataclass(frozen=True, slots=True)
class Refreshed:
    subscription: Subscription
    changed: bool


@dataclass
class ImageService:
    config: ServerConfig
    repo: ImageRepository
    vms: VMRepository
    data_dir: Path
    drain: Callable[[list[Action], float], None] = lambda actions, now: None  # the provisioner's apply
    _registering: set[str] = field(default_factory=set)

    # --- what may boot -------------------------------------------------------------------------------------

    def enforced(self) -> bool:
        """Whether only endorsed images may boot (docs/images.md, "The rule")."""
        declared = any(c.endorsed_images or getattr(c, "register_images", False) for c in self.config.clouds.values())
        return declared or self.repo.count_subscriptions() > 0

    def catalog(self) -> ImageCatalog:
        if not self.enforced():
            return NOT_ENFORCED
        return ImageCatalog(True, {h.identifier: h for h in self.repo.held_images()})

    def cloud_images(self, name: str, catalog: ImageCatalog, now: float) -> CloudImages:
        settings = self.config.clouds[name]
        register = isinstance(settings, LocalCloudConfig) and settings.register_images
        return cloud_images(catalog, now, settings.endorsed_images, settings.images, register)

    def view_fields(self, name: str, images: CloudImages) -> dict[str, Any]:
        """The image fields of the cloud's :class:`CloudView` (and the VOs it serves, which they change)."""
        settings = self.config.clouds[name]
        if not images.enforced:
            return {"vos": settings.served_vos()}
        # With image lists in force a VO's image is resolved through vo_images, and without a configured image
        # a VO gets an endorsed one: only the cloud's own `vos` list limits the VOs.
        return {
            "vos": None if settings.vos is None else frozenset(settings.vos),
            "endorsed_only": True,
            "images": images.bootable,
            "vo_images": images.vo_images,
        }

    def boot_choice(self, cloud: str, vo: str, image: str | None, now: float) -> BootChoice:
        """What to boot for a start of ``vo`` on ``cloud`` (``image``: the endorsed identifier the policy chose,
        if any), checked again at the moment of booting whatever the policy decided."""
        settings = self.config.clouds[cloud]
        catalog = self.catalog()
        ci = self.cloud_images(cloud, catalog, now)
        if not ci.enforced:
            return BootChoice(settings.images.get(vo, settings.images.get("*")))
        if image is None:
            view = self._view(cloud, ci)
            image = image_for(view, WorkClass.any_of(vo))
            if image is None:
                return BootChoice(refused=self._why_not(view, ci, WorkClass.any_of(vo), catalog, now))
        if image not in ci.bootable:
            return BootChoice(refused=ci.refused.get(image, f"image {image} is no endorsed image of cloud {cloud}"))
        return BootChoice(ci.mapping[image], image, ci.bootable[image])

    # --- subscriptions -------------------------------------------------------------------------------------

    def subscribe(
        self,
        principal: Principal,
        url: str,
        endorser_key: str,
        now: float,
        *,
        signature: str | None = None,
        endorser_name: str | None = None,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
    ) -> Subscription:
        """Fetch and verify the list at ``url`` signed by ``endorser_key`` and hold it; refused lists leave
        nothing behind."""
        require(principal, Role.SITE)
        _check_url(url, "url")
        sig_url = signature or signature_url(url)
        _check_url(sig_url, "signature_url")
        try:
            key = parse_public_key(endorser_key)
        except KeyFileError as exc:
            raise BadInput(f"endorser_key: {exc}", "endorser_key") from exc
        fp = fingerprint(key)
        for sub in self.repo.subscriptions():
            if sub.url == url:
                raise BadInput(f"{url} is already subscribed to (subscription {sub.id})", "url")
        data, sig = self._fetch(url, sig_url)
        try:
            verified = verify_list(data, sig, {fp: key}, now, endorser_name=endorser_name)
        except ImageListRefused as exc:
            raise ListRefused(exc) from exc
        self._check_owners(verified, None)
        values = {
            "url": url,
            "signature_url": sig_url,
            "endorser_key": public_key_pem(key),
            "endorser_fingerprint": fp,
            "endorser_name": endorser_name,
            "refresh_seconds": refresh_seconds,
            "created_at": now,
            "created_by": principal.name,
        }
        sub = self.repo.subscribe(values, _held(verified, sig), now)
        log.info("subscribed to image list %s version %s (%s)", sub.list_identifier, sub.version, url)
        self.register_pending(now)
        return sub

    def refresh(self, sub_id: int, now: float, principal: Principal | None = None) -> Refreshed:
        """Fetch the subscription's list again; hold it if it verifies and is newer. A refused or unreachable
        list changes nothing held (the reason is kept as ``last_error``) and raises."""
        if principal is not None:
            require(principal, Role.SITE)
        sub = self.repo.get(sub_id)
        key = parse_public_key(sub.endorser_key)
        try:
            data, sig = self._fetch(sub.url, sub.signature_url)
            verified = verify_list(
                data,
                sig,
                {sub.endorser_fingerprint: key},
                now,
                endorser_name=sub.endorser_name,
                list_identifier=sub.list_identifier,
                held_version=sub.version,
                held_canonical=sub.document.encode() if sub.document is not None else None,
            )
            self._check_owners(verified, sub_id)
        except ListRefused as exc:
            self.repo.record_attempt(sub_id, now, str(exc))
            raise
        except ImageListRefused as exc:
            self.repo.record_attempt(sub_id, now, str(exc))
            raise ListRefused(exc) from exc
        except BadInput as exc:
            self.repo.record_attempt(sub_id, now, str(exc))
            raise
        if sub.document is not None and verified.canonical.decode() == sub.document:
            return Refreshed(self.repo.record_attempt(sub_id, now, None), changed=False)
        held = self.repo.hold(sub_id, _held(verified, sig), now)
        log.info("image list %s now at version %s (was %s)", held.list_identifier, held.version, sub.version)
        self.register_pending(now)
        return Refreshed(held, changed=True)

    def unsubscribe(self, principal: Principal, sub_id: int) -> Subscription:
        require(principal, Role.SITE)
        return self.repo.unsubscribe(sub_id)

    def subscriptions(self, principal: Principal) -> list[Subscription]:
        require(principal, Role.SITE)
        return self.repo.subscriptions()

    def held_list(self, principal: Principal, sub_id: int) -> tuple[str, str]:
        """The held list's canonical JSON and its signature, as verified (anyone may verify them again)."""
        require(principal, Role.SITE)
        sub = self.repo.get(sub_id)
        if sub.document is None or sub.signature is None:
            raise NotFound(f"subscription {sub_id} holds no list")
        return sub.document, sub.signature

    def tick(self, now: float) -> list[object]:
        """Refresh the subscriptions that are due, fetch images still to be registered, and drain VMs of revoked
        images that were not yet drainable when the image was revoked."""
        done: list[object] = []
        for sub in self.repo.subscriptions():
            if sub.checked_at is None or now - sub.checked_at >= sub.refresh_seconds:
                try:
                    if self.refresh(sub.id, now).changed:
                        done.append(sub.id)
                except (BadInput, NotFound) as exc:
                    log.warning("image list subscription %d not refreshed: %s", sub.id, exc)
        self.register_pending(now)
        revoked = self.repo.revocations()
        if revoked:
            actions = self._drains(set(revoked), now, lambda i: f"image {i} revoked: {revoked[i][2]}")
            if actions:
                self._apply(actions, now)
                done.extend(actions)
        return done

    # --- images --------------------------------------------------------------------------------------------

    def list(self, now: float) -> list[dict[str, Any]]:
        """Every image held, revoked or mapped by a cloud, with its state, why, and the clouds that boot it."""
        catalog = self.catalog()
        per_cloud = {name: self.cloud_images(name, catalog, now) for name in self.config.clouds}
        known = set(catalog.images) | set(self.repo.revocations())
        for ci in per_cloud.values():
            known.update(ci.mapping)
        return [self._describe(i, catalog, per_cloud, now) for i in sorted(known)]

    def get(self, identifier: str, now: float) -> dict[str, Any]:
        found = [i for i in self.list(now) if i["identifier"] == identifier]
        if not found:
            raise NotFound(f"image {identifier} is in no list held here and no cloud maps it")
        return found[0]

    def revoke(self, principal: Principal, identifier: str, reason: str, now: float) -> dict[str, Any]:
        """Revoke an image here: it never boots again (until reinstated) and its VMs drain — they take no new
        job, finish those they run, and halt."""
        require(principal, Role.SITE)
        self.get(identifier, now)  # 404 for an image nobody knows
        self.repo.revoke(identifier, now, principal.name, reason)
        why = f"image {identifier} revoked by {principal.name}" + (f": {reason}" if reason else "")
        actions = self._drains({identifier}, now, lambda _i: why)
        self._apply(actions, now)
        log.info("%s; draining %d VM(s)", why, len(actions))
        return {**self.get(identifier, now), "drained": [a.vm_id for a in actions if isinstance(a, DrainVM)]}

    def reinstate(self, principal: Principal, identifier: str, now: float) -> dict[str, Any]:
        require(principal, Role.SITE)
        self.repo.reinstate(identifier)
        return self.get(identifier, now)

    def register_pending(self, now: float) -> None:
        """Fetch and check the files of held images for clouds that boot them from verified files (local
        clouds with ``register_images``); a file that does not match rejects the image everywhere."""
        if not any(isinstance(c, LocalCloudConfig) and c.register_images for c in self.config.clouds.values()):
            return
        for held in self.repo.held_images():
            if held.local_path is not None or held.rejected_reason is not None or not held.listed:
                continue
            if image_state(held, now)[0] is not ImageState.ENDORSED or held.identifier in self._registering:
                continue
            self._registering.add(held.identifier)
            try:
                self._register(parse_image_entry(self.repo.entry(held.identifier)), now)
            finally:
                self._registering.discard(held.identifier)

    def _register(self, image: ListedImage, now: float) -> None:
        name = hashlib.sha256(image.identifier.encode()).hexdigest()[:12]
        fmt = re.sub(r"[^A-Za-z0-9]", "", image.format)[:16] or "img"
        dest = self.data_dir / "images" / f"{image.sha512[:32]}-{name}.{fmt}"
        try:
            fetch_image(image, dest, self.config.images.fetch_timeout_seconds, self.fetch_policy)
        except ImageListRefused as exc:
            log.warning("image %s rejected: %s", image.identifier, exc)
            self.repo.set_rejected(image.identifier, str(exc), now)
            return
        except FetchFailed as exc:
            log.warning("image %s not fetched (tried again later): %s", image.identifier, exc)
            return
        self.repo.set_verified_file(image.identifier, str(dest), now)
        log.info("image %s fetched and verified: %s", image.identifier, dest)

    # --- why a job waits -----------------------------------------------------------------------------------

    def why_blocked(self, job: Job, now: float) -> str | None:
        """Why no cloud may boot a VM for a waiting job because of its image (or the images it may get), or
        ``None``. VMs already running may still take it."""
        req = job.spec.requirements
        if job.state is not JobState.WAITING or not self.config.clouds:
            return None
        catalog = self.catalog()
        if not catalog.enforced and req.image is None:
            return None
        wc = WorkClass.of_requirements(job.vo, req, job.wall_seconds)
        reasons = []
        for name in self.config.clouds:
            ci = self.cloud_images(name, catalog, now)
            view = self._view(name, ci)
            if image_for(view, wc) is not None:
                return None
            reasons.append(f"{name}: {self._why_not(view, ci, wc, catalog, now)}")
        if req.image is not None:
            state, why = catalog.state(req.image, now)
            head = f"image {req.image} is {state.value} ({why})"
        else:
            head = f"no endorsed image for VO {job.vo}"
        return f"no VM can be booted for it: {head}; " + "; ".join(reasons)

    def _why_not(self, view: CloudView, ci: CloudImages, wc: WorkClass, catalog: ImageCatalog, now: float) -> str:
        if view.vos is not None and wc.vo not in view.vos:
            return f"runs no VMs for VO {wc.vo}"
        if wc.image is not None:
            if wc.image not in ci.mapping:
                return f"maps no image {wc.image} (clouds.{view.name}.endorsed_images)"
            if wc.image not in ci.bootable:
                return ci.refused.get(wc.image, catalog.state(wc.image, now)[1])
            return f"image {wc.image} lacks tags {', '.join(sorted(wc.tags - view.tags - ci.bootable[wc.image]))}"
        if not ci.enforced:
            return f"lacks tags {', '.join(sorted(wc.tags - view.tags))}"
        if ci.vo_images:
            default = ci.vo_images.get(wc.vo, ci.vo_images.get("*"))
            configured = self.config.clouds[view.name].images
            image = configured.get(wc.vo, configured.get("*"))
            if image is None:
                return f"has no image for VO {wc.vo}"
            if default is None or default not in ci.bootable:
                return ci.refused.get(image if default is None else default, f"image {image} may not boot")
            return f"image {default} lacks tags {', '.join(sorted(wc.tags - view.tags - ci.bootable[default]))}"
        if not ci.bootable:
            return "has no endorsed image it may boot now" + (
                f" ({'; '.join(f'{i}: {w}' for i, w in sorted(ci.refused.items()))})" if ci.refused else ""
            )
        return f"no endorsed image offers tags {', '.join(sorted(wc.tags - view.tags))}"

    # --- internals -----------------------------------------------------------------------------------------

    def _view(self, name: str, ci: CloudImages) -> CloudView:
        """The image-related part of the cloud's view (what :func:`image_for` reads)."""
        tags = frozenset(self.config.clouds[name].tags)
        return CloudView(name=name, flavors=(), max_vms=0, tags=tags, **self.view_fields(name, ci))

    def _fetch(self, url: str, sig_url: str) -> tuple[bytes, bytes | None]:
        try:
            data = self._fetch_one(url)
            sig = self._fetch_one(sig_url, missing_ok=True)
        except FetchFailed as exc:
            raise BadInput(str(exc), "url") from exc
        assert data is not None
        return data, sig

    @property
    def fetch_policy(self) -> FetchPolicy:
        """Where the server may fetch from (images.allow_http, images.allowed_hosts): https, public hosts."""
        images = self.config.images
        return FetchPolicy.strict(images.allow_http, frozenset(images.allowed_hosts))

    def _fetch_one(self, url: str, missing_ok: bool = False) -> bytes | None:
        limits = self.config.images
        return fetch_bytes(url, limits.fetch_timeout_seconds, limits.max_list_bytes, missing_ok, self.fetch_policy)

    def _check_owners(self, verified: VerifiedList, sub_id: int | None) -> None:
        owners = self.repo.owners([i.identifier for i in verified.image_list.images])
        for i, image in enumerate(verified.image_list.images):
            owner = owners.get(image.identifier)
            if owner is not None and owner != sub_id:
                raise ListRefused(
                    ImageListRefused(
                        Refusal.CONFLICT,
                        f"image {image.identifier} is endorsed by the list of subscription {owner} already",
                        f"hv:images[{i}].hv:image.dc:identifier",
                    )
                )
        for sub in self.repo.subscriptions():
            if sub.id != sub_id and sub.list_identifier == verified.image_list.identifier:
                raise ListRefused(
                    ImageListRefused(
                        Refusal.CONFLICT,
                        f"list {sub.list_identifier} is held by subscription {sub.id} already",
                        "dc:identifier",
                    )
                )

    def _apply(self, actions: list[Action], now: float) -> None:
        for action in actions:
            try:
                self.drain([action], now)
            except (Conflict, IllegalTransition) as exc:  # the VM moved on meanwhile (halted, lost): nothing to drain
                log.info("not drained: %s", exc)

    def _drains(self, identifiers: set[str], now: float, why: Callable[[str], str]) -> list[Action]:
        catalog = self.catalog()
        actions: list[Action] = []
        for name in self.config.clouds:
            ci = self.cloud_images(name, catalog, now)
            by_image_id = {ci.mapping[i]: i for i in identifiers if i in ci.mapping}
            if not by_image_id:
                continue
            for vm in self.vms.list(states=set(DRAINABLE), cloud=name):
                if vm.image in by_image_id and getattr(vm, "cluster_id", None) is None:
                    actions.append(DrainVM(vm.id, why(by_image_id[vm.image])))
        return actions

    def _describe(
        self, identifier: str, catalog: ImageCatalog, per_cloud: dict[str, CloudImages], now: float
    ) -> dict[str, Any]:
        held = catalog.images.get(identifier)
        state, why = catalog.state(identifier, now) if catalog.enforced else image_state(held, now)
        revoked = self.repo.revocations().get(identifier)
        if held is None and revoked is not None:
            state = ImageState.REVOKED
            why = f"revoked by {revoked[1]} at {iso(revoked[0])}" + (f": {revoked[2]}" if revoked[2] else "")
        body: dict[str, Any] = {
            "identifier": identifier,
            "state": state.value,
            "why": why,
            "title": held.title if held else None,
            "list": held.list_identifier if held else None,
            "list_version": held.list_version if held else None,
            "subscription_id": held.subscription_id if held else None,
            "expires_at": held.expires_at if held else None,
            "tags": sorted(held.tags) if held else [],
            "verified_file": held.local_path if held else None,
            "clouds": {
                name: {"image_id": ci.mapping[identifier], "bootable": identifier in ci.bootable}
                for name, ci in per_cloud.items()
                if identifier in ci.mapping
            },
        }
        if held is not None:
            entry = self.repo.entry(identifier)
            body["entry"] = {k: entry[k] for k in sorted(entry)}
        return body


def _check_url(url: str, field_name: str) -> None:
    if not re.fullmatch(r"https?://\S+", url):
        raise BadInput(f"{field_name}: {url!r} is not an http:// or https:// URL", field_name)


def _held(verified: VerifiedList, signature: bytes | None) -> HeldList:
    entries = {}
    for raw in verified.document["hv:imagelist"]["hv:images"]:
        entry = raw["hv:image"]
        entries[entry["dc:identifier"]] = entry
    return HeldList(
        verified.image_list,
        entries,
        verified.canonical.decode(),
        (signature or b"").decode(errors="replace"),
    )

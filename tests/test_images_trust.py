"""Signing and verifying image lists (no server): every refusal names its reason, and only what was signed
verifies. Image files are fetched from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from cloudpilot.domain.images import SIGNED_PREFIX, canonical_bytes, parse_document
from cloudpilot.images.errors import ImageListRefused, Refusal
from cloudpilot.images.fetch import fetch_image
from cloudpilot.images.signing import fingerprint, parse_signature
from cloudpilot.images.trust import trusted_keys, verify_image_file, verify_list
from tests.helpers.images import DN, Endorser, FileServer, dump, image_entry, image_list

CONTENT = b"an el9 image for LHCb\n" * 100


def doc(version: str = "2", expires_in: float = 3600, **kw: object) -> dict:
    images = [image_entry("el9-lhcb-v42", CONTENT, "http://127.0.0.1:9/el9.img")]
    return image_list(images, version=version, expires_in=expires_in, **kw)  # type: ignore[arg-type]


def verify(data: bytes, sig: bytes | None, endorser: Endorser, **kw: object):  # type: ignore[no-untyped-def]
    trusted = trusted_keys([endorser.key.public_key()])
    return verify_list(data, sig, trusted, time.time(), **kw)  # type: ignore[arg-type]


def refusal(data: bytes, sig: bytes | None, endorser: Endorser, **kw: object) -> ImageListRefused:
    with pytest.raises(ImageListRefused) as caught:
        verify(data, sig, endorser, **kw)
    return caught.value


def test_a_signed_list_verifies_and_names_its_endorser() -> None:
    endorser, d = Endorser(), doc()
    verified = verify(dump(d), endorser.sign(d), endorser, endorser_name=DN)
    assert verified.endorser_key == endorser.fingerprint
    assert verified.image_list.identifier == "lhcb-images" and verified.image_list.version == "2"
    (image,) = verified.image_list.images
    assert image.identifier == "el9-lhcb-v42" and image.size == len(CONTENT)
    assert {"os:el9", "osversion:9.3", "arch:x86_64"} <= image.tags


def test_what_is_signed_is_the_prefix_and_the_canonical_json() -> None:
    endorser, d = Endorser(), doc()
    sig = parse_signature(endorser.sign(d))
    message = SIGNED_PREFIX + json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    endorser.key.public_key().verify(sig.value, message)  # raises if other bytes were signed
    assert canonical_bytes(parse_document(dump(d))) == message[len(SIGNED_PREFIX) :]
    # So re-indenting the file (a mirror pretty-printing it) keeps the signature valid...
    compact = json.dumps(d, separators=(",", ":")).encode()
    assert verify(compact, endorser.sign(d), endorser).image_list.version == "2"


def test_one_byte_changed_in_the_list_is_a_bad_signature() -> None:
    endorser, d = Endorser(), doc()
    data, sig = dump(d), endorser.sign(d)
    at = data.index(b"el9-lhcb-v42")
    tampered = data[:at] + b"E" + data[at + 1 :]  # ...but not a single character of a value
    refused = refusal(tampered, sig, endorser)
    assert refused.reason is Refusal.BAD_SIGNATURE and refused.field == "signature"
    assert "changed after it was signed" in str(refused)


def test_tampering_with_the_image_entry_or_the_expiry_is_a_bad_signature() -> None:
    endorser, d = Endorser(), doc()
    sig = endorser.sign(d)
    other = json.loads(json.dumps(d))
    other["hv:imagelist"]["hv:images"][0]["hv:image"]["sl:checksum:sha512"] = "0" * 128  # another image
    assert refusal(dump(other), sig, endorser).reason is Refusal.BAD_SIGNATURE
    later = json.loads(json.dumps(d))
    later["hv:imagelist"]["dc:date:expires"] = "2099-01-01T00:00:00Z"  # a longer life than endorsed
    assert refusal(dump(later), sig, endorser).reason is Refusal.BAD_SIGNATURE


def test_a_list_past_its_expiry_is_refused_even_well_signed() -> None:
    endorser, d = Endorser(), doc(expires_in=-5)
    refused = refusal(dump(d), endorser.sign(d), endorser)
    assert refused.reason is Refusal.EXPIRED and refused.field == "dc:date:expires"
    assert "expired at" in str(refused)


def test_a_lower_version_than_the_one_held_is_refused() -> None:
    endorser, d = Endorser(), doc(version="2")
    data, sig = dump(d), endorser.sign(d)
    refused = refusal(data, sig, endorser, held_version="3")
    assert refused.reason is Refusal.DOWNGRADE and refused.field == "hv:version"
    assert "lower than version 3" in str(refused)
    assert refusal(data, sig, endorser, held_version="2.1").reason is Refusal.DOWNGRADE
    # The same version: only the very same content is accepted again.
    held = canonical_bytes(d)
    assert verify(data, sig, endorser, held_version="2", held_canonical=held).image_list.version == "2"
    changed = doc(version="2", identifier="lhcb-images")
    changed["hv:imagelist"]["dc:title"] = "changed"
    refused = refusal(dump(changed), endorser.sign(changed), endorser, held_version="2", held_canonical=held)
    assert refused.reason is Refusal.DOWNGRADE and "new version" in str(refused)
    assert verify(data, sig, endorser, held_version="1.9").image_list.version == "2"  # 2 > 1.9 (not text order)


def test_a_list_signed_by_a_key_not_trusted_or_unsigned_is_refused() -> None:
    trusted, other, d = Endorser(), Endorser(), doc()
    refused = refusal(dump(d), other.sign(d), trusted)
    assert refused.reason is Refusal.UNTRUSTED_ENDORSER and other.fingerprint in str(refused)
    assert refusal(dump(d), None, trusted).reason is Refusal.MISSING_SIGNATURE
    assert refusal(dump(d), b"", trusted).reason is Refusal.MISSING_SIGNATURE
    assert refusal(dump(d), b"not a signature", trusted).reason is Refusal.BAD_SIGNATURE
    # The trusted key, but the list names another endorser than the one trusted for it.
    refused = refusal(dump(d), trusted.sign(d), trusted, endorser_name="/CN=someone else")
    assert refused.reason is Refusal.UNTRUSTED_ENDORSER and refused.field == "hv:endorser"


def test_a_signature_made_over_other_bytes_with_the_trusted_key_is_bad() -> None:
    endorser, d = Endorser(), doc()
    forged = {
        "format": "cloudpilot-signature/1",
        "alg": "ed25519",
        "key": endorser.fingerprint,
        "signature": base64.b64encode(endorser.key.sign(dump(d))).decode(),  # the file's bytes, not the message
    }
    assert refusal(dump(d), json.dumps(forged).encode(), endorser).reason is Refusal.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["hv:imagelist"].pop("hv:version"), "hv:version"),
        (lambda d: d["hv:imagelist"].update({"hv:version": "v2"}), "hv:version"),
        (lambda d: d["hv:imagelist"]["hv:images"][0]["hv:image"].pop("sl:arch"), "hv:images[0].hv:image.sl:arch"),
        (
            lambda d: d["hv:imagelist"]["hv:images"][0]["hv:image"].update({"hv:size": -1}),
            "hv:images[0].hv:image.hv:size",
        ),
        (lambda d: d["hv:imagelist"].update({"hv:endorser": {}}), "hv:endorser"),
    ],
)
def test_a_signed_but_malformed_list_is_invalid_with_the_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    endorser, d = Endorser(), doc()
    mutate(d)
    refused = refusal(dump(d), endorser.sign(d), endorser)
    assert refused.reason is Refusal.INVALID and refused.field == field


def test_duplicate_keys_and_floats_are_refused_before_anything_is_trusted() -> None:
    endorser, d = Endorser(), doc()
    data = dump(d).replace(b'"dc:title": "LHCb images"', b'"dc:title": "LHCb images", "dc:title": "x"')
    assert "twice" in str(refusal(data, endorser.sign(d), endorser))
    data = dump(d).replace(b'"hv:size": 2200', b'"hv:size": 2200.0')
    assert refusal(data, endorser.sign(d), endorser).reason is Refusal.INVALID


def test_an_image_whose_size_or_sha512_does_not_match_once_fetched_is_refused(tmp_path: Path) -> None:
    server = FileServer()
    try:
        good = image_entry("good", CONTENT, server.url("/good.img"))["hv:image"]
        server.files["/good.img"] = CONTENT
        server.files["/flipped.img"] = CONTENT[:-1] + b"X"  # one byte of the image changed
        server.files["/short.img"] = CONTENT[:-1]
        server.files["/long.img"] = CONTENT + b"!"
        endorser = Endorser()
        images = [good]
        for name in ("flipped", "short", "long"):
            images.append({**good, "dc:identifier": name, "hv:uri": server.url(f"/{name}.img")})
        d = image_list([{"hv:image": i} for i in images])
        verified = verify(dump(d), endorser.sign(d), endorser)
        by_id = {i.identifier: i for i in verified.image_list.images}
        path = fetch_image(by_id["good"], tmp_path / "good.img")
        assert verify_image_file(by_id["good"], path) == len(CONTENT)
        reasons = {}
        for name in ("flipped", "short", "long"):
            with pytest.raises(ImageListRefused) as caught:
                fetch_image(by_id[name], tmp_path / f"{name}.img")
            assert caught.value.reason is Refusal.IMAGE_MISMATCH
            assert not (tmp_path / f"{name}.img").exists()  # nothing unverified is left where it would be used
            reasons[name] = str(caught.value)
        assert "sl:checksum:sha512" in reasons["flipped"]
        assert "hv:size" in reasons["short"] and "hv:size" in reasons["long"]
    finally:
        server.stop()


def test_a_fingerprint_is_the_sha256_of_the_raw_key() -> None:
    endorser = Endorser()
    assert fingerprint(endorser.key.public_key()).startswith("SHA256:")
    assert len(fingerprint(endorser.key.public_key())) == len("SHA256:") + 43

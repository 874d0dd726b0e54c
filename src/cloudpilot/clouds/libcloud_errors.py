"""Translate Libcloud's exceptions into :mod:`cloudpilot.clouds.errors`, with secrets redacted.

A cloud's error can echo what we sent: the user-data (which carries the pilot's token), in clear or base64 (the
EC2 query API even puts it in the request URL, which connection errors quote), and the driver's credentials.
:class:`Redactor` removes all of these from our messages, and :func:`translate` also scrubs the original
exception in place, because ``raise … from exc`` keeps it as ``__cause__`` and a logged traceback prints it.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError, ProviderError
from libcloud.compute.types import KeyPairDoesNotExistError

from cloudpilot.clouds.errors import (
    CloudAuthFailed,
    CloudConfigError,
    CloudError,
    CloudUnavailable,
    Fatal,
    QuotaExceeded,
)
from cloudpilot.domain.auth import TOKEN_PATTERN

REDACTED = "[redacted]"
MAX_MESSAGE = 500  # a cloud's error body can be a whole HTML page; the start says what went wrong

# user-data as a parameter of the EC2 query API (GET …?UserData=…) or of Nova's JSON body
_USER_DATA_PARAM = re.compile(r"(UserData=)[^&\s'\"]+|(\"user_data\"\s*:\s*\")[^\"]*", re.IGNORECASE)
# secrets shorter than this are not redacted as substrings: they would mangle ordinary words
_MIN_SECRET = 4

# Order matters: a rate limit ("RequestLimitExceeded") also reads like a quota.
_RATE_LIMITED = re.compile(r"RequestLimitExceeded|Throttl|rate limit|Too Many Requests", re.IGNORECASE)
_QUOTA = re.compile(
    r"InstanceLimitExceeded|VcpuLimitExceeded|InsufficientInstanceCapacity|InsufficientFreeAddresses"
    r"|quota|LimitExceeded|limit exceeded|Maximum number of",
    re.IGNORECASE,
)
_CONFIG = re.compile(
    r"InvalidAMIID|InvalidInstanceType|InvalidParameter|InvalidKeyPair|InvalidGroup|InvalidSubnet"
    r"|InvalidSecurityGroup|Unsupported|invalid imageRef|invalid flavorRef|could not be found|not found",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(r"InvalidInstanceID\.(NotFound|Malformed)|could not be found|not found", re.IGNORECASE)


class Redactor:
    """Removes the user-data, the driver's secrets and anything shaped like a cloudpilot token from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = {s for s in secrets if len(s) >= _MIN_SECRET}

    def with_user_data(self, user_data: str) -> Redactor:
        """A redactor that also removes ``user_data`` in every form a driver may have sent it."""
        encoded = base64.b64encode(user_data.encode()).decode()
        return Redactor([*self._secrets, user_data, encoded, quote(encoded, safe=""), quote_plus(encoded)])

    def __call__(self, text: str) -> str:
        # Longest first, so a secret that contains another one is removed whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        text = _USER_DATA_PARAM.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)
        return TOKEN_PATTERN.sub(REDACTED, text)


def is_not_found(exc: Exception) -> bool:
    """Whether the cloud says the instance does not exist (``destroy`` then has nothing to do)."""
    code = _http_code(exc)
    return code == 404 or (code in (400, None) and bool(_NOT_FOUND.search(_raw_message(exc))))


def translate(exc: Exception, cloud: str, action: str, redact: Redactor) -> CloudError:
    """The cloudpilot error for a Libcloud (or transport) exception; scrubs ``exc`` in place.

    Retryable: no answer, 5xx, rate limits, quota and capacity refusals. Fatal: refused credentials, and
    requests the cloud says are wrong (unknown image, flavor, key pair, network…: 4xx).
    """
    message = f"{action}: {_describe(exc, redact)}"
    _scrub(exc, redact)
    code = _http_code(exc)
    raw = _raw_message(exc)
    if isinstance(exc, RateLimitReachedError) or code == 429 or _RATE_LIMITED.search(raw):
        return CloudUnavailable(cloud, message)
    if _QUOTA.search(raw) and (code is None or code < 500):
        return QuotaExceeded(cloud, message)
    if isinstance(exc, InvalidCredsError) or code == 401:
        return CloudAuthFailed(cloud, message)
    # No usable answer: refused or reset connections and timeouts (requests' errors are OSErrors too), and
    # bodies that do not parse (a proxy's HTML page, a truncated reply).
    if isinstance(exc, OSError | MalformedResponseError):
        return CloudUnavailable(cloud, message)
    if code is not None and code >= 500:
        return CloudUnavailable(cloud, message)
    if code == 403:
        return CloudAuthFailed(cloud, message)
    if isinstance(exc, KeyPairDoesNotExistError) or (code is not None and 400 <= code < 500):
        return CloudConfigError(cloud, message)
    if _CONFIG.search(raw) or isinstance(exc, ValueError | TypeError | AttributeError):
        return CloudConfigError(cloud, message)
    if isinstance(exc, LibcloudError):
        return CloudUnavailable(cloud, message)
    return Fatal(cloud, message)


def config_error(exc: Exception, cloud: str, action: str, redact: Redactor) -> CloudConfigError:
    """A :class:`CloudConfigError` for a failure before any request (the driver's constructor, options)."""
    message = f"{action}: {_describe(exc, redact)}"
    _scrub(exc, redact)
    return CloudConfigError(cloud, message)


def _http_code(exc: Exception) -> int | None:
    if isinstance(exc, BaseHTTPError):
        return int(exc.code) if exc.code is not None else None
    if isinstance(exc, ProviderError):
        return int(exc.http_code) if exc.http_code is not None else None
    return None


def _raw_message(exc: Exception) -> str:
    # BaseHTTPError keeps the cloud's text in .message, LibcloudError in .value; str() of the latter is a repr.
    for attr in ("message", "value"):
        value = getattr(exc, attr, None)
        if isinstance(value, str):
            return value
    return str(exc)


def _describe(exc: Exception, redact: Redactor) -> str:
    code = _http_code(exc)
    text = redact(_raw_message(exc)).strip() or type(exc).__name__
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "…"
    return f"{type(exc).__name__}" + (f" (HTTP {code})" if code else "") + f": {text}"


def _scrub(exc: BaseException, redact: Redactor) -> None:
    """Redact the exception, its chain and the exceptions it wraps, in place: tracebacks print them all."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        for attr in ("message", "value", "body", "url"):
            value = getattr(current, attr, None)
            if isinstance(value, str):
                # a read-only property cannot be set, but then str() reads the scrubbed args
                with contextlib.suppress(AttributeError):
                    setattr(current, attr, redact(value))
        # requests wraps urllib3's errors in args and in the chain; urllib3 keeps the cause in .reason
        wrapped = [*current.args, current.__cause__, current.__context__, getattr(current, "reason", None)]
        pending.extend(e for e in wrapped if isinstance(e, BaseException))

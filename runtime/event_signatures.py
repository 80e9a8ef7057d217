"""Webhook signatures, checked on the raw body before anything else looks at it.

* ``standard_webhooks`` (https://www.standardwebhooks.com, the ``standardwebhooks``
  package): ``webhook-id``, ``webhook-timestamp`` (within the source's tolerance of now,
  so an old capture cannot be replayed) and ``webhook-signature``, a space-separated list
  of ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``; any one may match (key
  rotation). The package signs; the comparison and the header parsing are ours, so a
  malformed header is a refusal, never an exception, and the tolerance is configurable.
* ``hmac_sha256``: one header holding the hex HMAC-SHA256 of the raw body (after an
  optional prefix such as ``sha256=``).

Every comparison is constant-time (``hmac.compare_digest``). A failure raises
``EventRejected`` with ``event:bad_signature`` and a detail that names what is wrong but
never a secret or an expected signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from runtime.errors import EventRejected
from runtime.event_config import SignatureConfig, SourceSecret

BAD_SIGNATURE = "event:bad_signature"
#: signatures one ``webhook-signature`` header may list (rotation needs two or three)
MAX_SIGNATURES = 10


def verify(
    source: str,
    config: SignatureConfig,
    secret: SourceSecret,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
) -> None:
    """Return if ``body`` is signed by ``secret`` as ``config`` says; else raise
    ``EventRejected`` (``event:bad_signature``). ``headers`` have lower-case names."""
    if config.scheme == "standard_webhooks":
        _standard(source, config, secret, headers, body, time.time() if now is None else now)
    else:
        _hmac(source, config, secret, headers, body)


def _reject(source: str, detail: str) -> EventRejected:
    return EventRejected(BAD_SIGNATURE, source, detail)


def _standard(
    source: str,
    config: SignatureConfig,
    secret: SourceSecret,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
) -> None:
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    missing = [
        n for n, v in (("webhook-id", msg_id), ("webhook-timestamp", stamp),
                       ("webhook-signature", signatures)) if not v
    ]  # fmt: skip
    if missing:
        raise _reject(source, f"missing header {', '.join(missing)}")
    if not stamp.isdigit() or len(stamp) > 12:
        raise _reject(source, "webhook-timestamp is not a Unix time in seconds")
    if abs(now - int(stamp)) > config.tolerance_s:
        raise _reject(source, f"webhook-timestamp is more than {config.tolerance_s}s away from now")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _reject(source, "body is not UTF-8 (standard webhooks sign text)") from None
    when = datetime.fromtimestamp(int(stamp), tz=UTC)
    expected = Webhook(secret.key).sign(msg_id=msg_id, timestamp=when, data=text)
    expected_raw = base64.b64decode(expected.split(",", 1)[1])
    listed = signatures.split(" ")[:MAX_SIGNATURES]
    matched = False
    for versioned in listed:
        version, _, encoded = versioned.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # every listed signature is compared: the time taken does not say which matched
        matched = hmac.compare_digest(expected_raw, given) or matched
    if not matched:
        raise _reject(source, "no v1 signature in webhook-signature matches")


def _hmac(
    source: str,
    config: SignatureConfig,
    secret: SourceSecret,
    headers: Mapping[str, str],
    body: bytes,
) -> None:
    header = (config.header or "").lower()
    given = headers.get(header, "")
    if not given:
        raise _reject(source, f"missing header {config.header}")
    if config.prefix:
        if not given.startswith(config.prefix):
            raise _reject(source, f"{config.header} does not start with {config.prefix!r}")
        given = given[len(config.prefix) :]
    expected = hmac.new(secret.key, body, hashlib.sha256).hexdigest()
    # compare as ASCII bytes: compare_digest refuses non-ASCII str, and a hostile header
    # may carry anything
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8")):
        raise _reject(source, f"{config.header} does not match the body's HMAC-SHA256")


def sign_hmac(key: bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 an ``hmac_sha256`` sender puts in its header (tests, examples)."""
    return hmac.new(key, body, hashlib.sha256).hexdigest()

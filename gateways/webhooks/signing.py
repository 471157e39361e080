"""Webhook signatures: HMAC-SHA256 over the timestamp and the body, in the Stripe style.

Every delivery carries

    Cloudkernel-Timestamp: <unix seconds when this attempt was sent>
    Cloudkernel-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

where `secret` is the webhook's secret as UTF-8 bytes (the whole `whsec_...` string) and
`<body>` the exact bytes of the request body. A receiver recomputes the HMAC over the raw body
it read (before any JSON parsing), compares in constant time, and refuses a timestamp older
than its tolerance (5 minutes by default), which stops an old request being replayed. Each
attempt is signed again with a fresh timestamp, so a retry an hour later still verifies. The
header may carry several comma-separated `v1=` values (for a future secret rotation); one
match is enough.
"""

import hashlib
import hmac
import secrets
import time

SCHEME = "v1"
SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300


def new_secret() -> str:
    """A fresh random webhook secret (256 bits)."""
    return SECRET_PREFIX + secrets.token_hex(32)


def compute_signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int | str, body: bytes) -> str:
    """The value of the Cloudkernel-Signature header: `v1=<hex>`."""
    return f"{SCHEME}={compute_signature(secret, timestamp, body)}"


def verify_signature(secret: str, timestamp: int | str, body: bytes, header: str,
                     tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> bool:
    """True when `header` signs this timestamp and body and the timestamp is recent enough.

    `tolerance` is in seconds (a timestamp further than that from now, either way, fails);
    `now` defaults to the current time.
    """
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    expected = compute_signature(secret, ts, body)
    found = False
    for part in (header or "").split(","):
        scheme, _, value = part.strip().partition("=")
        # Compare every candidate, so the time taken does not tell which one matched.
        if scheme == SCHEME and hmac.compare_digest(value.strip(), expected):
            found = True
    return found

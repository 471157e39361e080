"""AWS Signature Version 4, the pure parts a service needs (standard library only).

A service that takes SigV4-signed HTTP requests (the EC2 API) never sees a secret: it parses
the `Authorization` header (`parse_authorization`), rebuilds the canonical request and the
string to sign from the request as received (`canonical_request`, `string_to_sign`, or both at
once with `signed_request`), and asks the ACL service over NATS to check the signature
(`services.acl.client.AclClient.verify_sigv4`). The ACL service, which alone can derive the
key's secret, computes `signing_key(secret, date, region, service)` and the HMAC.

The canonical forms follow botocore's `SigV4Auth` (the tests check agreement):

* the path is the request's path as sent (percent-encoded), its dot segments and empty
  segments removed, then percent-encoded once more (`/` and `~` kept), as botocore does for
  every service but S3;
* each query name and value is decoded (`+` is a space, as botocore's `urlencode` and HTML
  forms send it), then encoded with only `A-Za-z0-9-_.~` left bare, and the pairs sorted;
* each signed header is `name:value`, the name lowercase, the values of a repeated header
  joined with `,`, runs of whitespace inside a value made one space, ends trimmed.
"""

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote_plus

from aggregates.errors import UnauthenticatedError

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
AMZ_DATE_HEADER = "x-amz-date"
CONTENT_SHA256_HEADER = "x-amz-content-sha256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SAFE = "-_.~"
_FIELD = re.compile(r"\s*([A-Za-z]+)\s*=\s*([^,\s]*)\s*")
_AMZ_DATE = re.compile(r"^[0-9]{8}T[0-9]{6}Z$")
_NAME = re.compile(r"^[a-z0-9-]{1,63}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class SigV4Authorization:
    """What an `Authorization: AWS4-HMAC-SHA256 ...` header says."""

    access_key_id: str
    date: str  # YYYYMMDD, the credential scope's
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str  # lowercase hex

    @property
    def scope(self) -> str:
        """The credential scope: `date/region/service/aws4_request`."""
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"


@dataclass(frozen=True)
class SigV4Request:
    """A signed request made ready for `AclClient.verify_sigv4(**request.verification())`."""

    authorization: SigV4Authorization
    amz_date: str
    canonical_request: str
    string_to_sign: str

    def verification(self) -> dict[str, str]:
        """The keyword arguments of `AclClient.verify_sigv4` for this request."""
        auth = self.authorization
        return {"access_key_id": auth.access_key_id, "date": auth.date, "region": auth.region,
                "service": auth.service, "string_to_sign": self.string_to_sign,
                "signature": auth.signature}


def parse_authorization(header: str) -> SigV4Authorization:
    """The parts of a SigV4 `Authorization` header; UnauthenticatedError naming what is wrong."""
    if not isinstance(header, str) or not header.strip():
        raise UnauthenticatedError(f"header Authorization is required ({ALGORITHM} "
                                   "Credential=..., SignedHeaders=..., Signature=...)")
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise UnauthenticatedError(f"Authorization must use {ALGORITHM}, got "
                                   f"{algorithm[:40]!r}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _FIELD.fullmatch(part)
        if match is None:
            raise UnauthenticatedError(f"Authorization: cannot read {part.strip()[:60]!r} "
                                       "(expected Name=value)")
        fields[match.group(1)] = match.group(2)
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in fields]
    if missing:
        raise UnauthenticatedError(f"Authorization lacks {', '.join(missing)}")
    credential = fields["Credential"].split("/")
    if len(credential) != 5 or credential[4] != TERMINATOR:
        raise UnauthenticatedError("Authorization Credential must be <access key id>/<YYYYMMDD>"
                                   f"/<region>/<service>/{TERMINATOR}")
    key_id, date, region, service, _ = credential
    check_scope(access_key_id=key_id, date=date, region=region, service=service)
    signed = tuple(fields["SignedHeaders"].split(";"))
    if not all(signed) or list(signed) != sorted(set(signed)) \
            or any(h != h.lower() for h in signed):
        raise UnauthenticatedError("Authorization SignedHeaders must be lowercase header "
                                   "names, sorted, separated by ';'")
    if "host" not in signed:
        raise UnauthenticatedError("Authorization SignedHeaders must include host")
    signature = fields["Signature"].lower()
    if not _HEX64.match(signature):
        raise UnauthenticatedError("Authorization Signature must be 64 hex digits")
    return SigV4Authorization(access_key_id=key_id, date=date, region=region, service=service,
                              signed_headers=signed, signature=signature)


def check_scope(*, access_key_id: str, date: str, region: str, service: str) -> None:
    """Raise UnauthenticatedError unless the credential's parts are well formed."""
    if not _KEY_ID.match(access_key_id):
        raise UnauthenticatedError(f"malformed access key id {access_key_id[:64]!r}")
    try:
        datetime.strptime(date, "%Y%m%d")
    except (TypeError, ValueError):
        raise UnauthenticatedError(f"credential date must be YYYYMMDD, got "
                                   f"{str(date)[:20]!r}") from None
    for name, value in (("region", region), ("service", service)):
        if not _NAME.match(value):
            raise UnauthenticatedError(f"credential {name} must be 1-63 of a-z, 0-9 and '-', "
                                       f"got {value[:64]!r}")


def canonical_path(path: str) -> str:
    """The canonical URI of a path as sent (botocore's rule for every service but S3)."""
    segments = [s for s in path.split("/") if s and s != "."]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        else:
            kept.append(segment)
    normalized = "/" + "/".join(kept)
    if path.endswith("/") and kept:
        normalized += "/"
    return quote(normalized, safe="/~")


def canonical_query(query: str) -> str:
    """The canonical query string of a raw query (`a=1&b=x%20y`): pairs re-encoded, sorted."""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((quote(unquote_plus(name), safe=_SAFE),
                      quote(unquote_plus(value), safe=_SAFE)))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_headers(headers: Headers, signed_headers: Iterable[str]) -> str:
    """`name:value` lines of the signed headers; UnauthenticatedError if one is missing."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    values: dict[str, list[str]] = {}
    for name, value in items:
        values.setdefault(name.lower().strip(), []).append(" ".join(str(value).split()))
    lines = []
    for name in signed_headers:
        if name not in values:
            raise UnauthenticatedError(f"signed header {name[:60]!r} is not in the request")
        lines.append(f"{name}:{','.join(values[name])}")
    return "\n".join(lines)


def canonical_request(method: str, path: str, query: str, headers: Headers,
                      signed_headers: Iterable[str], payload_hash: str) -> str:
    """The canonical request: method, path, query, signed headers and the payload's hash."""
    signed = tuple(signed_headers)
    return "\n".join((method.upper(), canonical_path(path or "/"), canonical_query(query),
                      canonical_headers(headers, signed) + "\n", ";".join(signed),
                      payload_hash))


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    """The text a SigV4 signature covers."""
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return "\n".join((ALGORITHM, amz_date, scope, digest))


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The key derived from the secret for one day, region and service."""
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(secret: str, date: str, region: str, service: str, text: str) -> str:
    """The hex signature of a string to sign (what the ACL service computes)."""
    key = signing_key(secret, date, region, service)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def payload_hash(body: bytes, headers: Headers = ()) -> str:
    """The payload hash to sign: the body's SHA-256 in hex.

    A client's `X-Amz-Content-SHA256` header is used only when it is the body's hash or
    UNSIGNED-PAYLOAD; any other value is refused, so an unsigned body cannot be swapped in.
    """
    actual = hashlib.sha256(body).hexdigest()
    items = headers.items() if isinstance(headers, Mapping) else headers
    claimed = next((v for n, v in items if n.lower() == CONTENT_SHA256_HEADER), None)
    if claimed is None or claimed.lower() == actual:
        return actual
    if claimed == UNSIGNED_PAYLOAD:
        return UNSIGNED_PAYLOAD
    raise UnauthenticatedError(f"header X-Amz-Content-SHA256 does not match the body "
                               f"({claimed[:70]!r})")


def amz_date_of(headers: Headers) -> str:
    """The request's signing time (`X-Amz-Date`, YYYYMMDD'T'HHMMSS'Z')."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    value = next((v for n, v in items if n.lower() == AMZ_DATE_HEADER), "")
    if not _AMZ_DATE.match(value.strip()):
        raise UnauthenticatedError("header X-Amz-Date is required, as YYYYMMDDTHHMMSSZ (UTC)")
    return value.strip()


def amz_time(amz_date: str) -> datetime:
    """An X-Amz-Date value as an aware UTC datetime."""
    return datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)


def signed_request(method: str, path: str, query: str, headers: Headers,
                   body: bytes) -> SigV4Request:
    """Parse and canonicalize an HTTP request signed with SigV4 in its Authorization header."""
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    authorization = next((v for n, v in pairs if n.lower() == "authorization"), "")
    auth = parse_authorization(authorization)
    amz_date = amz_date_of(pairs)
    if amz_date[:8] != auth.date:
        raise UnauthenticatedError(f"X-Amz-Date {amz_date} is not on the credential's date "
                                   f"{auth.date}")
    canonical = canonical_request(method, path, query, pairs, auth.signed_headers,
                                  payload_hash(body, pairs))
    return SigV4Request(authorization=auth, amz_date=amz_date, canonical_request=canonical,
                        string_to_sign=string_to_sign(amz_date, auth.scope, canonical))

"""SigV4 authentication of EC2 requests, decided by the ACL service.

The service rebuilds the string to sign from the request as received
(`services.acl.sigv4.signed_request`) and asks the ACL service to check it
(`AclClient.check_sigv4`); it never sees a secret. The ACL answers a short-lived bearer token
for the key's user, which the service sends its commands with, so the platform's own checks
(the principal's rights, the resource's account) decide every change.

Every request is checked by the ACL, none from a memory of an earlier answer: the ACL alone
knows whether the key still exists, is revoked or expired, and whether its user is enabled, so
a revocation takes effect at once on every path. A signature the ACL saw before (a replay: the
same bytes, signed in the same second) is answered `replayed` rather than refused, and the
Caller says so; what a replay gets is the service's decision (`services.ec2.service`: a read is
served again, a change gets its first answer or a refusal). A Caller's `fingerprint` names the
signed request (access key id, signature and string to sign): a change's idempotency key is
derived from it, so the platform runs a replayed change once whatever the service remembers.
"""

import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

from aggregates.errors import ForbiddenError, UnauthenticatedError, ValidationError
from services.acl.client import AclPrincipal, AclUnavailableError, SigV4Check
from services.acl.sigv4 import (
    ALGORITHM,
    SigV4Authorization,
    SigV4Request,
    amz_time,
    canonical_request,
    check_scope,
    payload_hash,
    signed_request,
    string_to_sign,
)
from services.ec2.protocol import Ec2Error

MAX_EXPIRES = 604_800  # a presigned URL lives at most 7 days (the ACL's skew limits it more)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Caller:
    """Who signed a request: the ACL's principal and a bearer token to act as them."""

    principal: AclPrincipal
    token: str
    replayed: bool = False  # the ACL saw this signature before
    fingerprint: str = ""  # the signed request's: sha256 of key id, signature, string to sign

    @property
    def account(self) -> str | None:
        """The account whose resources the caller sees (None: a root admin sees all)."""
        return self.principal.account


class Verifier(Protocol):
    """What checks a signature (`services.acl.client.AclClient`)."""

    async def check_sigv4(self, *, access_key_id: str, date: str, region: str, service: str,
                          string_to_sign: str, signature: str) -> SigV4Check:
        """A bearer token and the principal of a valid signature, and whether it is a replay."""
        ...


class Authenticator:
    """Turns a signed HTTP request into a Caller, or the EC2 error refusing it."""

    def __init__(self, verifier: Verifier, *, region: str, service: str = "ec2") -> None:
        self.verifier, self.region, self.service = verifier, region, service

    async def caller(self, method: str, path: str, query: str,
                     headers: Iterable[tuple[str, str]], body: bytes) -> Caller:
        """The caller of a request signed in its Authorization header."""
        pairs = list(headers)
        try:
            if any(n.lower() == "authorization" for n, _ in pairs):
                signed = signed_request(method, path, query, pairs, body)
            elif "X-Amz-Signature=" in query:
                signed = presigned_request(method, path, query, pairs, body)
            else:
                raise Ec2Error("MissingAuthenticationToken",
                               "Request is missing Authentication Token (sign it with AWS "
                               "Signature Version 4)", 401)
        except UnauthenticatedError as e:
            raise Ec2Error("IncompleteSignature", str(e)) from None
        auth = signed.authorization
        if auth.region != self.region or auth.service != self.service:
            raise Ec2Error("AuthFailure", f"Credential should be scoped to region "
                           f"'{self.region}' and service '{self.service}', not "
                           f"'{auth.region}'/'{auth.service}'")
        try:
            check = await self.verifier.check_sigv4(**signed.verification())
        except UnauthenticatedError as e:
            raise auth_error(str(e)) from None
        except ForbiddenError as e:
            raise Ec2Error("UnauthorizedOperation", str(e)) from None
        except ValidationError as e:
            raise Ec2Error("IncompleteSignature", str(e)) from None
        except AclUnavailableError as e:
            raise Ec2Error("Unavailable", f"authentication is unavailable: {e}", 503) from None
        return Caller(principal=check.principal, token=check.token, replayed=check.replayed,
                      fingerprint=fingerprint(auth.access_key_id, auth.signature,
                                              signed.string_to_sign))


def fingerprint(access_key_id: str, signature: str, string_to_sign: str) -> str:
    """What names one signed request: its key id, signature and string to sign, hashed."""
    return hashlib.sha256(f"{access_key_id}\n{signature}\n{string_to_sign}".encode()).hexdigest()


def presigned_request(method: str, path: str, query: str, headers: Iterable[tuple[str, str]],
                      body: bytes, *, now: float | None = None) -> SigV4Request:
    """A request presigned in its query string (`X-Amz-Algorithm`, `X-Amz-Credential`,
    `X-Amz-Date`, `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`), made ready for
    the ACL's check; Ec2Error RequestExpired once past its expiry."""
    pairs = list(headers)
    values = dict(parse_qsl(query, keep_blank_values=True))
    missing = [n for n in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
                           "X-Amz-SignedHeaders", "X-Amz-Signature") if not values.get(n)]
    if missing:
        raise UnauthenticatedError(f"a presigned request needs {', '.join(missing)}")
    if values["X-Amz-Algorithm"] != ALGORITHM:
        raise UnauthenticatedError(f"X-Amz-Algorithm must be {ALGORITHM}")
    credential = values["X-Amz-Credential"].split("/")
    if len(credential) != 5 or credential[4] != "aws4_request":
        raise UnauthenticatedError("X-Amz-Credential must be <access key id>/<YYYYMMDD>/"
                                   "<region>/<service>/aws4_request")
    key_id, date, region, service, _ = credential
    check_scope(access_key_id=key_id, date=date, region=region, service=service)
    signature = values["X-Amz-Signature"].lower()
    if not _HEX64.match(signature):
        raise UnauthenticatedError("X-Amz-Signature must be 64 hex digits")
    signed = tuple(values["X-Amz-SignedHeaders"].split(";"))
    if "host" not in signed or list(signed) != sorted(set(signed)):
        raise UnauthenticatedError("X-Amz-SignedHeaders must be sorted and include host")
    amz_date = values["X-Amz-Date"]
    try:
        expires = int(values.get("X-Amz-Expires", "900"))
        signed_at = amz_time(amz_date).timestamp()
    except ValueError:
        raise UnauthenticatedError("X-Amz-Date must be YYYYMMDDTHHMMSSZ and X-Amz-Expires "
                                   "seconds") from None
    if amz_date[:8] != date or not 1 <= expires <= MAX_EXPIRES:
        raise UnauthenticatedError("X-Amz-Date must be on the credential's date and "
                                   f"X-Amz-Expires 1 to {MAX_EXPIRES}")
    if signed_at + expires < (time.time() if now is None else now):
        raise Ec2Error("RequestExpired", f"Request has expired (signed {amz_date}, valid "
                       f"{expires} s)")
    unsigned = "&".join(item for item in query.split("&")
                        if item.partition("=")[0] != "X-Amz-Signature")
    auth = SigV4Authorization(access_key_id=key_id, date=date, region=region, service=service,
                              signed_headers=signed, signature=signature)
    canonical = canonical_request(method, path, unsigned, pairs, signed,
                                  payload_hash(body, pairs))
    return SigV4Request(authorization=auth, amz_date=amz_date, canonical_request=canonical,
                        string_to_sign=string_to_sign(amz_date, auth.scope, canonical))


def auth_error(message: str) -> Ec2Error:
    """EC2's error for an ACL refusal of a signature."""
    lowered = message.lower()
    if "does not match" in lowered:
        return Ec2Error("SignatureDoesNotMatch", "The request signature we calculated does not "
                        "match the signature you provided. Check your AWS Secret Access Key "
                        f"and signing method. ({message})")
    if "server clock" in lowered or "more than a day" in lowered:
        return Ec2Error("RequestExpired", message)
    return Ec2Error("AuthFailure", f"AWS was not able to validate the provided access "
                    f"credentials ({message})")

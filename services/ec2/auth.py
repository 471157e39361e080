"""SigV4 authentication of EC2 requests, decided by the ACL service.

The service rebuilds the string to sign from the request as received
(`gateways.acl.sigv4.signed_request`) and asks the ACL service to check it
(`AclClient.verify_sigv4`); it never sees a secret. The ACL answers a short-lived bearer token
for the key's user, which the service sends its commands with, so the platform's own checks
(the principal's rights, the resource's account) decide every change.

The ACL refuses a signature it saw before (a replay). A client may legitimately send the
same bytes twice within a second (a poller, a retry), which sign the same; so a verified
signature's answer is remembered here for a while and reused for an identical request.
"""

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

from aggregates.errors import ForbiddenError, UnauthenticatedError, ValidationError
from gateways.acl.client import AclPrincipal, AclUnavailableError
from gateways.acl.sigv4 import (
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
from gateways.services.ec2.protocol import Ec2Error

REMEMBER_SECONDS = 600.0  # well inside the token's life (15 minutes)
MAX_REMEMBERED = 10_000
MAX_EXPIRES = 604_800  # a presigned URL lives at most 7 days (the ACL's skew limits it more)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Caller:
    """Who signed a request: the ACL's principal and a bearer token to act as them."""

    principal: AclPrincipal
    token: str

    @property
    def account(self) -> str | None:
        """The account whose resources the caller sees (None: a root admin sees all)."""
        return self.principal.account


class Verifier(Protocol):
    """What checks a signature (`gateways.acl.client.AclClient`)."""

    async def verify_sigv4(self, *, access_key_id: str, date: str, region: str, service: str,
                           string_to_sign: str, signature: str) -> tuple[str, AclPrincipal]:
        """A bearer token and the principal of a valid signature."""
        ...


class Authenticator:
    """Turns a signed HTTP request into a Caller, or the EC2 error refusing it."""

    def __init__(self, verifier: Verifier, *, region: str, service: str = "ec2",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.verifier, self.region, self.service, self.clock = verifier, region, service, clock
        self._remembered: OrderedDict[str, tuple[float, Caller]] = OrderedDict()

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
        memo = hashlib.sha256(f"{auth.signature}\n{signed.string_to_sign}".encode()).hexdigest()
        now = self.clock()
        found = self._remembered.get(memo)
        if found is not None and found[0] > now:
            return found[1]
        try:
            token, principal = await self.verifier.verify_sigv4(**signed.verification())
        except UnauthenticatedError as e:
            raise auth_error(str(e)) from None
        except ForbiddenError as e:
            raise Ec2Error("UnauthorizedOperation", str(e)) from None
        except ValidationError as e:
            raise Ec2Error("IncompleteSignature", str(e)) from None
        except AclUnavailableError as e:
            raise Ec2Error("Unavailable", f"authentication is unavailable: {e}", 503) from None
        caller = Caller(principal=principal, token=token)
        self._remember(memo, caller, now)
        return caller

    def _remember(self, memo: str, caller: Caller, now: float) -> None:
        self._remembered[memo] = (now + REMEMBER_SECONDS, caller)
        while self._remembered:
            first = next(iter(self._remembered))
            if len(self._remembered) <= MAX_REMEMBERED and self._remembered[first][0] > now:
                break
            self._remembered.popitem(last=False)


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

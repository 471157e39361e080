"""The EC2 Query protocol: parameters in, XML out, and EC2's errors.

A request is `Action=...&Version=...&...` in a POST form body or a GET query string. Lists
are numbered from 1 (`InstanceId.1`, `InstanceId.2`), structures dotted (`Placement.
AvailabilityZone`), filters `Filter.N.Name` with `Filter.N.Value.M`. A response is
`<{Action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">` with a `requestId` and
the action's elements; lists are `<xSet><item>...</item></xSet>`. An error is
`<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>` with the
HTTP status EC2 gives that code, which botocore turns into `ClientError` with that code.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
API_VERSION = "2016-11-15"
_INDEXED = re.compile(r"^(?P<prefix>.+)\.(?P<n>[1-9][0-9]{0,3})$")
MAX_LIST = 1000

# code -> HTTP status (EC2 answers 400 for every client error but authentication ones and a dry
# run's answer; a server error is a 5xx)
STATUS = {
    "AuthFailure": 401, "SignatureDoesNotMatch": 403, "IncompleteSignature": 400,
    "MissingAuthenticationToken": 401, "UnauthorizedOperation": 403, "OptInRequired": 403,
    "RequestExpired": 400, "Unavailable": 503, "ServiceUnavailable": 503,
    "InternalError": 500, "RequestLimitExceeded": 503, "DryRunOperation": 412,
    "InsufficientInstanceCapacity": 500,
}


# Every error code this service answers, each one of EC2's documented codes (the API
# reference's "Error codes": the common client errors, those of the actions served here, and
# the server errors).
CODES = frozenset({
    "AuthFailure", "DependencyViolation", "DryRunOperation", "IdempotentParameterMismatch",
    "IncompleteSignature",
    "IncorrectInstanceState", "IncorrectState", "InsufficientInstanceCapacity",
    "InternalError", "InvalidAMIID.Malformed", "InvalidAMIID.NotFound",
    "InvalidAMIID.Unavailable", "InvalidAction", "InvalidAttachment.NotFound", "InvalidID",
    "InvalidInstanceID.Malformed", "InvalidInstanceID.NotFound", "InvalidInstanceType",
    "InvalidKey.Format", "InvalidKeyPair.Duplicate",
    "InvalidKeyPair.NotFound", "InvalidParameterCombination", "InvalidParameterValue",
    "InvalidSnapshot.NotFound", "InvalidSnapshotID.Malformed", "InvalidSubnetID.Malformed",
    "InvalidSubnetID.NotFound", "InvalidSubnet.Conflict", "InvalidSubnet.Range",
    "InvalidVolume.NotFound", "InvalidVolumeID.Malformed", "InvalidVpc.Range",
    "InvalidVpcID.Malformed", "InvalidVpcID.NotFound", "MissingAction",
    "MissingAuthenticationToken", "MissingParameter", "OperationNotPermitted", "RequestExpired",
    "SignatureDoesNotMatch", "TagLimitExceeded", "UnauthorizedOperation", "Unavailable",
    "UnsupportedOperation", "VolumeInUse", "VpcLimitExceeded",
})


class Ec2Error(Exception):
    """An error answered as EC2 does: its code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message
        self.status = status if status is not None else STATUS.get(code, 400)


@dataclass(frozen=True)
class Filter:
    """One `Filter.N`: a name and the values any of which matches."""

    name: str
    values: tuple[str, ...]


class Params:
    """The request's parameters, with EC2's list, structure and filter conventions."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self.values: dict[str, str] = {}
        for name, value in items:
            self.values[name] = value

    @property
    def action(self) -> str:
        """The `Action` parameter (MissingAction when absent)."""
        action = self.values.get("Action", "").strip()
        if not action:
            raise Ec2Error("MissingAction", "The request must contain the parameter Action")
        return action

    def get(self, name: str, default: str | None = None) -> str | None:
        """One parameter, or `default`."""
        return self.values.get(name, default)

    def required(self, name: str) -> str:
        """A parameter that must be there (MissingParameter otherwise)."""
        value = self.values.get(name)
        if value is None or value == "":
            raise Ec2Error("MissingParameter",
                           f"The request must contain the parameter {name}")
        return value

    def integer(self, name: str, default: int | None = None, *, low: int = 0,
                high: int = 2**31 - 1) -> int | None:
        """An integer parameter in [low, high] (InvalidParameterValue otherwise)."""
        raw = self.values.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise Ec2Error("InvalidParameterValue",
                           f"Value ({raw[:40]}) for parameter {name} is invalid. "
                           "Expected an integer.") from None
        if not low <= value <= high:
            raise Ec2Error("InvalidParameterValue",
                           f"Value ({value}) for parameter {name} is invalid. "
                           f"Expected {low} to {high}.")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        """A `true`/`false` parameter."""
        raw = self.values.get(name)
        if raw is None or raw == "":
            return default
        if raw.lower() not in ("true", "false"):
            raise Ec2Error("InvalidParameterValue",
                           f"Value ({raw[:40]}) for parameter {name} is invalid. "
                           "Expected true or false.")
        return raw.lower() == "true"

    def members(self, prefix: str) -> list[str]:
        """`prefix.1`, `prefix.2`... in order (also `prefix.member.N`, as some SDKs send)."""
        found: dict[int, str] = {}
        for name, value in self.values.items():
            match = _INDEXED.match(name)
            if match is None:
                continue
            head = match.group("prefix")
            if head in (prefix, f"{prefix}.member"):
                found[int(match.group("n"))] = value
        if len(found) > MAX_LIST:
            raise Ec2Error("InvalidParameterValue", f"too many {prefix} values (at most "
                           f"{MAX_LIST})")
        return [found[n] for n in sorted(found)]

    def structures(self, prefix: str) -> list["Params"]:
        """`prefix.N.Field...` as one Params per N (its fields without `prefix.N.`), by N."""
        found: dict[int, list[tuple[str, str]]] = {}
        pattern = re.compile(rf"^{re.escape(prefix)}\.([1-9][0-9]{{0,3}})\.(.+)$")
        for name, value in self.values.items():
            if (match := pattern.match(name)) is not None:
                found.setdefault(int(match.group(1)), []).append((match.group(2), value))
        if len(found) > MAX_LIST:
            raise Ec2Error("InvalidParameterValue", f"too many {prefix} values (at most "
                           f"{MAX_LIST})")
        return [Params(found[n]) for n in sorted(found)]

    def filters(self) -> list[Filter]:
        """`Filter.N.Name` with its `Filter.N.Value.M` values."""
        out = []
        numbers = sorted({int(m.group(1)) for name in self.values
                          if (m := re.match(r"^Filter\.([1-9][0-9]{0,3})\.Name$", name))})
        for n in numbers:
            name = self.values[f"Filter.{n}.Name"]
            values = tuple(self.members(f"Filter.{n}.Value"))
            if not values:
                raise Ec2Error("InvalidParameterValue",
                               f"The filter '{name[:60]}' has no value (Filter.{n}.Value.1)")
            out.append(Filter(name, values))
        return out


# ---------------------------------------------------------------------------- XML


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return escape(str(value))


def element(name: str, value: Any) -> str:
    """One element: a dict is a structure, a list an `<item>` set, None nothing."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        inner = "".join(element(k, v) for k, v in value.items())
        return f"<{name}>{inner}</{name}>"
    if isinstance(value, list | tuple):
        items = "".join(element("item", v) for v in value)
        return f"<{name}>{items}</{name}>"
    return f"<{name}>{_scalar(value)}</{name}>"


def response(action: str, request_id: str, body: Mapping[str, Any]) -> bytes:
    """The XML document answering `action`."""
    inner = element("requestId", request_id) + "".join(element(k, v) for k, v in body.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{NAMESPACE}">'
            f"{inner}</{action}Response>").encode()


def error_response(error: Ec2Error, request_id: str) -> bytes:
    """The XML document of an error."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message>"
            f"</Error></Errors><RequestID>{escape(request_id)}</RequestID></Response>"
            ).encode()


def timestamp(text: str | None) -> str | None:
    """An event timestamp (ISO 8601, microseconds) as EC2 writes times (milliseconds, Z)."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return _scalar(parsed)

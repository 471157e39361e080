"""Pagination as EC2 does it: `MaxResults` (5..1000) and an opaque `NextToken`.

Items are ordered by a stable key (creation time, then id) and a token holds the key of the
last item answered, so the next page starts right after it whatever was created or deleted in
between: every item present throughout the walk is answered once. A token also holds a digest
of the request's other parameters (its filters), so a token of another query is refused.
"""

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from services.ec2.protocol import Ec2Error, Params

MIN_RESULTS, MAX_RESULTS = 5, 1000
_UNBOUND = ("Action", "Version", "MaxResults", "NextToken")  # not part of the query's identity
T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    """Which page a request asks for: at most `limit` items after the key `after`."""

    scope: str
    limit: int | None
    after: tuple[str, ...] | None


def _scope(action: str, params: Params) -> str:
    bound = sorted((k, v) for k, v in params.values.items()
                   if k not in _UNBOUND and not k.startswith("X-Amz-"))
    digest = hashlib.sha256(json.dumps([action, bound]).encode()).hexdigest()
    return digest[:16]


def encode(scope: str, key: Sequence[str]) -> str:
    """The token of the page after the item with this key."""
    raw = json.dumps([1, scope, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(scope: str, token: str) -> tuple[str, ...]:
    """The key a token holds; InvalidParameterValue if it is not one of this query's."""
    bad = Ec2Error("InvalidParameterValue", f"The NextToken '{token[:60]}' is not valid for "
                   "this request")
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise bad from None
    if not (isinstance(data, list) and len(data) >= 3 and data[0] == 1
            and all(isinstance(x, str) for x in data[1:])):
        raise bad
    if data[1] != scope:
        raise bad
    return tuple(data[2:])


def page_of(action: str, params: Params, *, ids_param: str | None = None) -> Page:
    """The page a request asks for (MaxResults with explicit ids is refused, as in EC2)."""
    limit = params.integer("MaxResults", low=MIN_RESULTS, high=MAX_RESULTS)
    if limit is not None and ids_param and params.members(ids_param):
        raise Ec2Error("InvalidParameterCombination", f"The parameter {ids_param} cannot be "
                       "used with the parameter MaxResults")
    scope = _scope(action, params)
    token = params.get("NextToken")
    return Page(scope, limit, decode(scope, token) if token else None)


def paginate(items: Sequence[T], key: Callable[[T], tuple[str, ...]],
             page: Page) -> tuple[list[T], str | None]:
    """The page's items in key order, and the token of the next page (None: the last)."""
    ordered = sorted(items, key=key)
    if page.after is not None:
        ordered = [i for i in ordered if key(i) > page.after]
    if page.limit is None or len(ordered) <= page.limit:
        return ordered, None
    chosen = ordered[:page.limit]
    return chosen, encode(page.scope, key(chosen[-1]))

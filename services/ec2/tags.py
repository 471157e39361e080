"""Tags as the actions use them: `Tag.N.Key`/`Tag.N.Value` and `TagSpecification.N` read
with EC2's limits, a resource's tags (its stored ones over its defaults), `tagSet`, and the
`tag:<key>`, `tag-key`, `tag-value` filters.

A resource made outside EC2 (through the platform's API) has its platform name as a default
`Name` tag; names EC2 made itself (an instance's id, `ROOT-` and it, a subnet's network name) are no
tags.
"""

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from services.ec2.context import TAG_FILTER, Request
from services.ec2.ids import INSTANCE, SNAPSHOT, SUBNET, VOLUME, VPC
from services.ec2.protocol import Ec2Error, Params
from services.ec2.store import MAX_TAGS, effective_tags

RESOURCE_TYPES = {INSTANCE: "instance", VOLUME: "volume", SNAPSHOT: "snapshot", VPC: "vpc",
                  SUBNET: "subnet"}
MAX_KEY, MAX_VALUE = 128, 256
RESERVED = "aws:"
_GENERATED = re.compile(r"^(ROOT-)?(i|vol|snap)-[0-9a-f]{32}$|^ec2-subnet-[0-9a-f]{32}$")


def default_tags(platform_name: str) -> dict[str, str]:
    """The tags a resource has of itself: its platform name as `Name`, unless EC2 made it."""
    if not platform_name or _GENERATED.match(platform_name):
        return {}
    return {"Name": platform_name[:MAX_VALUE]}


def tag_set(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """Tags as EC2's `tagSet` (by key)."""
    return [{"key": k, "value": tags[k]} for k in sorted(tags)]


def check_key(key: str, where: str) -> str:
    """A tag key within EC2's rules (InvalidParameterValue otherwise)."""
    if not key:
        raise Ec2Error("InvalidParameterValue", f"{where}: a tag key must not be empty")
    if len(key) > MAX_KEY:
        raise Ec2Error("InvalidParameterValue", f"{where}: the tag key '{key[:40]}...' is "
                       f"longer than {MAX_KEY} characters")
    if key.lower().startswith(RESERVED):
        raise Ec2Error("InvalidParameterValue", f"{where}: tag keys starting with 'aws:' are "
                       "reserved for internal use")
    return key


def read_tags(params: Params, prefix: str = "Tag") -> dict[str, str | None]:
    """`prefix.N.Key` / `prefix.N.Value` as key -> value (None: no Value given)."""
    out: dict[str, str | None] = {}
    for n, tag in enumerate(params.structures(prefix), start=1):
        where = f"{prefix}.{n}"
        key = check_key(tag.get("Key") or "", f"{where}.Key")
        value = tag.get("Value")
        if value is not None and len(value) > MAX_VALUE:
            raise Ec2Error("InvalidParameterValue", f"{where}.Value: the value of tag '{key}'"
                           f" is longer than {MAX_VALUE} characters")
        if key in out:
            raise Ec2Error("InvalidParameterValue", f"{where}.Key: the tag key '{key}' is "
                           "given twice")
        out[key] = value
    return out


def new_tags(params: Params, prefix: str = "Tag") -> dict[str, str]:
    """Tags to set (a missing value is the empty string), at most MAX_TAGS."""
    tags = {k: v or "" for k, v in read_tags(params, prefix).items()}
    if len(tags) > MAX_TAGS:
        raise Ec2Error("TagLimitExceeded", f"The maximum number of tags ({MAX_TAGS}) for a "
                       f"resource has been reached: {len(tags)} given")
    return tags


def tag_specifications(params: Params, allowed: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """`TagSpecification.N` of a creating action: resource type -> its tags."""
    out: dict[str, dict[str, str]] = {}
    for n, spec in enumerate(params.structures("TagSpecification"), start=1):
        kind = spec.get("ResourceType")
        if not kind:
            raise Ec2Error("MissingParameter", f"The request must contain the parameter "
                           f"TagSpecification.{n}.ResourceType")
        if kind not in allowed:
            raise Ec2Error("InvalidParameterValue", f"'{kind[:40]}' is not a valid taggable "
                           f"resource type for this operation (one of: {', '.join(allowed)})")
        if kind in out:
            raise Ec2Error("InvalidParameterValue", f"TagSpecification.{n}: the resource "
                           f"type '{kind}' is given twice")
        out[kind] = new_tags(spec, "Tag")
    return out


def tags_of(req: Request, resources: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The tags of resources (EC2 id -> platform name), in one store query."""
    stored = req.platform.store.tags(list(resources))
    return {rid: effective_tags(default_tags(name), stored.get(rid, {}))
            for rid, name in resources.items()}


def tag_new(req: Request, ec2_id: str, account: str, tags: Mapping[str, str]) -> None:
    """Tag a resource being created (its specification is already checked)."""
    if tags:
        req.platform.store.set_tags({ec2_id: (account, {})}, tags)


def tag_filters(tag_set_of: Callable[[Any], Iterable[Mapping[str, str]]]) -> dict[
        str, Callable[[Any], list[Any]]]:
    """The `tag:<key>`, `tag-key` and `tag-value` filters over an item's tagSet."""
    return {
        TAG_FILTER: lambda i: [(t["key"], t["value"]) for t in tag_set_of(i)],
        "tag-key": lambda i: [t["key"] for t in tag_set_of(i)],
        "tag-value": lambda i: [t["value"] for t in tag_set_of(i)],
    }

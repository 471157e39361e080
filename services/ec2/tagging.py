"""Tag actions: CreateTags, DeleteTags, DescribeTags.

Tags are the EC2 service's own data, in its store, for the instances, volumes, snapshots,
VPCs and subnets the caller sees (a root admin: every account's). Every resource id is
checked first (a malformed one gets its `...Malformed` code, another account's or an unknown one its
`...NotFound` code), then the change is one transaction: nothing is half-applied.
"""

from datetime import UTC, datetime
from typing import Any

from services.ec2.context import Request, matches
from services.ec2.ids import (
    INSTANCE,
    SNAPSHOT,
    SUBNET,
    VOLUME,
    VPC,
    from_ec2,
    not_found,
    to_ec2,
)
from services.ec2.instances import visible
from services.ec2.pages import page_of, paginate
from services.ec2.protocol import Ec2Error
from services.ec2.tags import (
    RESOURCE_TYPES,
    default_tags,
    new_tags,
    read_tags,
    tags_of,
)
from services.ec2.vpcs import visible_subnets, visible_vpcs

Resources = dict[str, tuple[str, dict[str, str]]]  # EC2 id -> (account, default tags)


def _resource(req: Request, ec2_id: str) -> tuple[str, str]:
    """(account, platform name) of a resource the caller may tag; its NotFound otherwise."""
    prefix = next((p for p in RESOURCE_TYPES if ec2_id.startswith(p)), None)
    if prefix is None:
        raise Ec2Error("InvalidID", f"The ID '{ec2_id[:80]}' is not valid: only instances "
                       "(i-), volumes (vol-), snapshots (snap-), VPCs (vpc-) and subnets "
                       "(subnet-) are tagged here")
    uid, view = from_ec2(prefix, ec2_id), req.platform.view
    if prefix == VPC:
        vpc = next((v for v in visible_vpcs(req) if v.vpc_id == to_ec2(VPC, uid)), None)
        if vpc is not None:
            return vpc.owner, ""
    elif prefix == SUBNET:
        subnet = next((s for s in visible_subnets(req) if s.network.id == uid), None)
        if subnet is not None and subnet.shared and req.account is not None:
            # one subnet every account sees, its tags with it: not one account's to change
            raise Ec2Error("UnauthorizedOperation", f"The subnet '{ec2_id[:80]}' is shared "
                           "by every account: only a root admin may tag it")
        if subnet is not None:
            return subnet.owner, subnet.network.name
    elif prefix == INSTANCE:
        vm = view.vm(uid, req.account)
        if vm is not None and visible(vm, datetime.now(UTC)):
            return vm.account, vm.name
    elif prefix == VOLUME:
        volume = view.volume(uid, req.account)
        if volume is not None and volume.state != "Expunged":
            return volume.account, volume.name
    else:
        snapshot = view.snapshot(uid, req.account)
        if snapshot is not None and snapshot.state != "Destroyed":
            return snapshot.account, ""
    raise not_found(prefix, ec2_id)


def _resources(req: Request) -> Resources:
    ids = req.params.members("ResourceId")
    if not ids:
        raise Ec2Error("MissingParameter", "The request must contain the parameter ResourceId")
    out: Resources = {}
    for ec2_id in ids:
        account, name = _resource(req, ec2_id.strip())
        out[ec2_id.strip()] = (account, default_tags(name))
    return out


async def create_tags(req: Request) -> dict[str, Any]:
    """CreateTags: add or overwrite tags on resources."""
    resources = _resources(req)
    tags = new_tags(req.params)
    if not tags:
        raise Ec2Error("MissingParameter", "The request must contain the parameter Tag")
    await req.check_dry_run()  # the service's own data: the caller's resources, checked
    req.platform.store.set_tags(resources, tags)
    return {"return": True}


async def delete_tags(req: Request) -> dict[str, Any]:
    """DeleteTags: delete tags (by key, or key and value) or, with no Tag, all of them."""
    resources = _resources(req)
    tags = read_tags(req.params)
    await req.check_dry_run()
    req.platform.store.delete_tags(resources, tags or None)
    return {"return": True}


_TAG_FILTERS = {
    "resource-id": lambda t: [t["resourceId"]],
    "resource-type": lambda t: [t["resourceType"]],
    "key": lambda t: [t["key"]],
    "value": lambda t: [t["value"]],
}


def _visible_names(req: Request) -> dict[str, tuple[str, str]]:
    """Every resource the caller sees: EC2 id -> (resource type, platform name)."""
    view, now = req.platform.view, datetime.now(UTC)
    out = {to_ec2(INSTANCE, v.id): ("instance", v.name)
           for v in view.vms(req.account, include_expunged=True) if visible(v, now)}
    out.update({to_ec2(VOLUME, v.id): ("volume", v.name) for v in view.volumes(req.account)})
    out.update({to_ec2(SNAPSHOT, s.id): ("snapshot", "") for s in view.snapshots(req.account)
                if s.state != "Destroyed"})
    out.update({v.vpc_id: ("vpc", "") for v in visible_vpcs(req)})
    out.update({s.subnet_id: ("subnet", s.network.name) for s in visible_subnets(req)})
    return out


async def describe_tags(req: Request) -> dict[str, Any]:
    """DescribeTags: the tags of the caller's resources, filtered and paged."""
    page = page_of("DescribeTags", req.params)
    filters = req.params.filters()
    names = _visible_names(req)
    for f in filters:  # exact resource ids: read only their tags
        if f.name == "resource-id" and not any(c in v for v in f.values for c in "*?"):
            names = {rid: names[rid] for rid in f.values if rid in names}
    tags = tags_of(req, {rid: name for rid, (_, name) in names.items()})
    items = [{"resourceId": rid, "resourceType": names[rid][0], "key": key, "value": value}
             for rid, found in tags.items() for key, value in found.items()]
    chosen = [i for i in items if matches(filters, _TAG_FILTERS, i)]
    shown, next_token = paginate(chosen, lambda t: (t["resourceId"], t["key"]), page)
    return {"tagSet": shown, "nextToken": next_token}

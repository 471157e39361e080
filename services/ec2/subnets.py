"""Subnet actions over the platform's guest networks: DescribeSubnets, CreateSubnet,
DeleteSubnet (what a subnet is, and which VPC holds it: `services.ec2.vpcs`).

CreateSubnet sends the platform's `network.create` (an Isolated network, named
`ec2-subnet-<hex>` from the request) as the caller, waits until the network exists, then
`network.implement` (its VLAN), and answers it `pending` or, implemented by then, `available`.
Networks belong to no account, so the platform's ACL lets only a root admin create, implement
or shut one down: a tenant's CreateSubnet and DeleteSubnet are `UnauthorizedOperation`, as the
ACL answers. A root admin may create a subnet in an account's VPC (it is then that
account's). DeleteSubnet is `network.shutdown` (refused while a NIC holds an address:
`DependencyViolation`); the platform has no command that destroys a network.
"""

from collections.abc import Mapping
from ipaddress import IPv4Network
from typing import Any
from uuid import UUID

from services.ec2.context import Refused, Request, matches, refused
from services.ec2.ids import SUBNET, from_ec2, not_found, to_ec2
from services.ec2.pages import page_of, paginate
from services.ec2.protocol import Ec2Error
from services.ec2.tags import tag_filters, tag_new, tag_specifications, tags_of
from services.ec2.vpcs import (
    Subnet,
    Vpc,
    chosen_ids,
    find_vpc,
    read_cidr,
    render_subnet,
    visible_subnets,
)
from services.framework.tenant_rows import NetworkRow, ZoneRow

NETWORK_WAIT = 20.0  # seconds CreateSubnet waits for the network to be made, then implemented
NETWORK_NAME = "ec2-subnet-"


_SUBNET_FILTERS = {
    "subnet-id": lambda s: [s["subnetId"]],
    "vpc-id": lambda s: [s["vpcId"]],
    "cidr-block": lambda s: [s["cidrBlock"]],
    "cidrBlock": lambda s: [s["cidrBlock"]],
    "cidr": lambda s: [s["cidrBlock"]],
    "availability-zone": lambda s: [s["availabilityZone"]],
    "availabilityZone": lambda s: [s["availabilityZone"]],
    "availability-zone-id": lambda s: [s["availabilityZoneId"]],
    "available-ip-address-count": lambda s: [s["availableIpAddressCount"]],
    "state": lambda s: [s["state"]],
    "default-for-az": lambda s: ["false"],
    "defaultForAz": lambda s: ["false"],
    "map-public-ip-on-launch": lambda s: ["false"],
    "owner-id": lambda s: [s["ownerId"]],
    **tag_filters(lambda s: s["tagSet"]),
}


async def describe_subnets(req: Request) -> dict[str, Any]:
    """DescribeSubnets: the networks the caller sees (by SubnetId.N / filters), paged."""
    page = page_of("DescribeSubnets", req.params, ids_param="SubnetId")
    subnets = visible_subnets(req)
    wanted = set(chosen_ids(req, SUBNET, "SubnetId", [s.subnet_id for s in subnets]))
    zones = {str(z.id): z for z in req.platform.view.zones()}
    tags = tags_of(req, {s.subnet_id: s.network.name for s in subnets})
    filters = req.params.filters()
    items = [(s, render_subnet(s, zones.get(s.network.zone_id), tags[s.subnet_id]))
             for s in subnets if s.subnet_id in wanted]
    chosen = [(s, item) for s, item in items if matches(filters, _SUBNET_FILTERS, item)]
    shown, next_token = paginate(chosen, lambda r: (r[0].network.created_at,
                                                    r[0].subnet_id), page)
    return {"subnetSet": [item for _s, item in shown], "nextToken": next_token}


def _subnet_zone(req: Request, vpc: Vpc) -> ZoneRow:
    zones = req.platform.view.zones()
    name, zone_id = req.params.get("AvailabilityZone"), req.params.get("AvailabilityZoneId")
    found = [z for z in zones if (not name or z.name == name)
             and (not zone_id or str(z.id) == zone_id)]
    if (name or zone_id) and not found:
        raise Ec2Error("InvalidParameterValue", f"Invalid availability zone: "
                       f"[{(name or zone_id or '')[:60]}]")
    if vpc.zone is not None:
        if (name or zone_id) and vpc.zone not in found:
            raise Ec2Error("InvalidParameterValue", f"The vpc '{vpc.vpc_id}' is zone "
                           f"{vpc.zone.name}'s: its subnets are in that zone")
        return vpc.zone
    if not found:
        raise Ec2Error("InvalidParameterValue", "the platform has no availability zone yet")
    return found[0]


def _check_block(block: IPv4Network, vpc: Vpc, zone: ZoneRow, subnets: list[Subnet]) -> None:
    if vpc.cidr and not block.subnet_of(IPv4Network(vpc.cidr)):
        raise Ec2Error("InvalidSubnet.Range", f"The CIDR '{block}' is invalid: it is not "
                       f"inside the vpc's {vpc.cidr}")
    if zone.guest_cidr and not block.subnet_of(IPv4Network(zone.guest_cidr)):
        raise Ec2Error("InvalidSubnet.Range", f"The CIDR '{block}' is invalid: networks of "
                       f"zone {zone.name} lie inside its guest CIDR {zone.guest_cidr}")
    for other in subnets:
        if other.vpc_id == vpc.vpc_id and IPv4Network(other.network.cidr).overlaps(block):
            raise Ec2Error("InvalidSubnet.Conflict", f"The CIDR '{block}' conflicts with "
                           f"another subnet ({other.subnet_id}, {other.network.cidr})")


def _forbidden(e: Refused) -> Ec2Error:
    error = refused(e)
    if error.code == "UnauthorizedOperation":
        return Ec2Error("UnauthorizedOperation", "Subnets are the platform's networks, which "
                        "belong to no account: only a root admin may create or delete one "
                        f"here ({e.message})")
    return error


async def create_subnet(req: Request) -> dict[str, Any]:
    """CreateSubnet: a new platform network in a VPC (network.create, network.implement)."""
    vpc = find_vpc(req, req.params.required("VpcId"))
    block = read_cidr(req.params.required("CidrBlock"), "subnet", "InvalidSubnet.Range")
    zone = _subnet_zone(req, vpc)
    subnets = visible_subnets(req)
    _check_block(block, vpc, zone, subnets)
    specs = tag_specifications(req.params, ("subnet",))
    try:
        await req.check_dry_run(("network.create", None), ("network.implement", None))
    except Ec2Error as e:
        if e.code == "UnauthorizedOperation":
            raise Ec2Error(e.code, "Subnets are the platform's networks, which belong to no "
                           f"account: only a root admin may create one here ({e.message})",
                           e.status) from None
        raise
    platform, view = req.platform, req.platform.view
    name = NETWORK_NAME + req.derived_id("CreateSubnet").hex
    try:
        outcome = await platform.command(req.caller, "network.create", {
            "zone_id": str(zone.id), "name": name, "cidr": str(block),
            "network_type": "Isolated"}, idempotency_key=req.key("CreateSubnet"))
    except Refused as e:
        raise _forbidden(e) from None
    result = outcome.result if isinstance(outcome.result, Mapping) else {}
    network_id, operation_id = UUID(str(result["network_id"])), result.get("operation_id")
    subnet_id = to_ec2(SUBNET, network_id)
    if vpc.zone is None:  # placed before anyone can see the network
        platform.store.place_subnet(network_id, vpc.vpc_id, vpc.owner)
    tag_new(req, subnet_id, vpc.owner, specs.get("subnet", {}))

    def designed() -> bool:
        op = view.operation(UUID(str(operation_id))) if operation_id else None
        return view.network(network_id) is not None or bool(op and op.finished)

    await platform.wait_for(designed, NETWORK_WAIT)
    network = view.network(network_id)
    if network is None:
        op = view.operation(UUID(str(operation_id))) if operation_id else None
        if op is not None and op.finished:
            raise Ec2Error("InvalidParameterValue", f"the platform did not create the "
                           f"network: {op.message or op.status}")
        raise Ec2Error("Unavailable", f"the platform has not created network {name} yet; "
                       "it is not implemented (DescribeSubnets shows it pending)", 503)
    if network.state in ("Allocated", "Shutdown"):
        try:
            implementing = await platform.command(
                req.caller, "network.implement", {"network_id": str(network_id)},
                idempotency_key=req.key("CreateSubnet", "implement"))
        except Refused as e:
            raise _forbidden(e) from None
        await platform.settle(implementing)
        await platform.wait_for(lambda: (row := view.network(network_id)) is not None
                                and row.state != "Implementing", NETWORK_WAIT)
    network = view.network(network_id) or network
    subnet = Subnet(network, vpc.vpc_id, vpc.owner)
    return {"subnet": render_subnet(subnet, zone, specs.get("subnet", {}))}


async def delete_subnet(req: Request) -> dict[str, Any]:
    """DeleteSubnet: shut the network down (network.shutdown)."""
    wanted = req.params.required("SubnetId")
    normal = to_ec2(SUBNET, from_ec2(SUBNET, wanted))
    subnet = next((s for s in visible_subnets(req) if s.subnet_id == normal), None)
    if subnet is None:
        raise not_found(SUBNET, wanted)
    network = subnet.network
    if network.allocated_ips:
        raise Ec2Error("DependencyViolation", f"The subnet '{normal}' has dependencies and "
                       f"cannot be deleted ({network.allocated_ips} addresses are in use)")
    if network.state != "Implemented":
        raise Ec2Error("IncorrectState", f"The subnet '{normal}' is {network.state}: only an "
                       "available subnet can be deleted")
    try:
        await req.check_dry_run(("network.shutdown", None))
    except Ec2Error as e:
        if e.code == "UnauthorizedOperation":
            raise Ec2Error(e.code, "Subnets are the platform's networks, which belong to no "
                           f"account: only a root admin may delete one here ({e.message})",
                           e.status) from None
        raise
    try:
        outcome = await req.platform.command(req.caller, "network.shutdown",
                                             {"network_id": str(network.id)},
                                             idempotency_key=req.key("DeleteSubnet"))
    except Refused as e:
        if e.code in ("invalid", "conflict"):
            raise Ec2Error("DependencyViolation", f"The subnet '{normal}' has dependencies "
                           f"and cannot be deleted ({e.message})") from None
        raise _forbidden(e) from None
    await req.platform.settle(outcome)
    return {"return": True}


def launch_network(req: Request, subnet_id: str) -> NetworkRow:
    """The network of a subnet RunInstances is asked to launch into (one the caller sees)."""
    normal = to_ec2(SUBNET, from_ec2(SUBNET, subnet_id))
    subnet = next((s for s in visible_subnets(req) if s.subnet_id == normal), None)
    if subnet is None:
        raise not_found(SUBNET, subnet_id)
    return subnet.network

"""VPCs over the platform's guest networks, and the model subnets share: DescribeVpcs,
CreateVpc, DeleteVpc (the subnet actions are `services.ec2.subnets`).

A subnet is a guest network (`subnet-` + its id, as RunInstances' SubnetId takes it).
Networks belong to no account on this platform (any tenant may deploy on an Implemented
one), so every live network (Allocated or Implementing: `pending`; Implemented: `available`;
a Shutdown or Destroyed one is a deleted subnet) is a subnet every account sees, unless
CreateSubnet placed it in an account's VPC: then only that account (and a root admin) sees it.
`availableIpAddressCount` is what the network can still hand out: its usable addresses less
the gateway, its reserved ranges and those NICs hold.

The platform has no VPC. Each account has one VPC per zone, `vpc-` + a version-5 UUID of the
account and the zone (a root admin's, of no account, holds the same networks), holding the
zone's networks not placed elsewhere; it cannot be deleted. Its CIDR is the smallest block
covering the zone's guest CIDR and its subnets (10.0.0.0/8 when it has neither): EC2 needs
one, and the platform has none; the guru keeps a new Isolated network inside the zone's guest
CIDR, but an older or Shared one may lie outside it. CreateVpc makes a VPC of the caller's
account in the service's own store (at most MAX_VPCS), which spans every zone; DeleteVpc
refuses while it holds subnets (`DependencyViolation`).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from services.ec2.context import Request, matches
from services.ec2.ids import SUBNET, VPC, from_ec2, not_found, to_ec2
from services.ec2.pages import page_of, paginate
from services.ec2.protocol import Ec2Error
from services.ec2.tags import tag_filters, tag_new, tag_set, tag_specifications, tags_of
from services.framework.tenant_rows import NetworkRow, ZoneRow

LIVE_STATES = {"Allocated": "pending", "Implementing": "pending", "Implemented": "available"}
MAX_VPCS = 5  # EC2's default per region
PREFIXES = (16, 28)  # the block sizes EC2 takes for a VPC and a subnet
FALLBACK_CIDR = "10.0.0.0/8"


@dataclass(frozen=True)
class Vpc:
    """A VPC as the caller sees it: a zone's (`zone` set) or one CreateVpc made."""

    vpc_id: str
    owner: str
    zone: ZoneRow | None
    cidr: str | None  # None: the zone's VPC of a zone with no guest CIDR (from its subnets)
    created_at: str


@dataclass(frozen=True)
class Subnet:
    """A network as the caller sees it: its VPC and the account that owns it."""

    network: NetworkRow
    vpc_id: str
    owner: str
    shared: bool = False  # in no account's VPC: every account's (only a root admin tags it)

    @property
    def subnet_id(self) -> str:
        """Its EC2 id."""
        return to_ec2(SUBNET, self.network.id)


def zone_vpc_id(account: str | None, zone_id: UUID | str) -> str:
    """The id of an account's VPC of a zone."""
    return VPC + uuid5(NAMESPACE_URL, f"cloudkernel:ec2:vpc:{account or ''}:{zone_id}").hex


def visible_subnets(req: Request) -> list[Subnet]:
    """The live networks the caller sees, as subnets."""
    placed = req.platform.store.subnet_vpcs()
    out = []
    for network in req.platform.view.networks():
        if network.state not in LIVE_STATES:
            continue
        where = placed.get(network.id)
        if where is None:
            out.append(Subnet(network, zone_vpc_id(req.account, network.zone_id),
                              req.account or "", shared=True))
        elif req.account is None or where[1] == req.account:
            out.append(Subnet(network, where[0], where[1]))
    return out


def visible_vpcs(req: Request) -> list[Vpc]:
    """The caller's VPCs: one per zone, then those CreateVpc made."""
    out = [Vpc(zone_vpc_id(req.account, z.id), req.account or "", z, z.guest_cidr,
               z.created_at) for z in req.platform.view.zones()]
    out += [Vpc(v.vpc_id, v.account, None, v.cidr, v.created_at)
            for v in req.platform.store.vpcs(req.account)]
    return out


def free_addresses(network: NetworkRow) -> int:
    """How many addresses the network can still hand out."""
    block = IPv4Network(network.cidr)
    low, high = int(block.network_address) + 1, int(block.broadcast_address) - 1
    gateway = int(IPv4Address(network.gateway))
    ranges = sorted([(gateway, gateway)] + [(int(IPv4Address(a)), int(IPv4Address(b)))
                                            for a, b in network.reserved_ranges])
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    excluded = sum(max(0, min(end, high) - max(start, low) + 1) for start, end in merged)
    return max(0, high - low + 1 - excluded - network.allocated_ips)


def vpc_cidr(vpc: Vpc, subnets: list[Subnet]) -> str:
    """The VPC's CIDR: its own (CreateVpc's), else the smallest block covering the zone's
    guest CIDR and its subnets (a network made past the guru may lie outside the former)."""
    if vpc.zone is None and vpc.cidr:
        return vpc.cidr
    blocks = [IPv4Network(s.network.cidr) for s in subnets if s.vpc_id == vpc.vpc_id]
    blocks += [IPv4Network(vpc.cidr)] if vpc.cidr else []
    if not blocks:
        return FALLBACK_CIDR
    cover = blocks[0]
    while not all(b.subnet_of(cover) for b in blocks):
        cover = cover.supernet()
    return str(cover)


def render_vpc(vpc: Vpc, cidr: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """A VPC as EC2 describes it."""
    return {"vpcId": vpc.vpc_id, "ownerId": vpc.owner, "state": "available", "cidrBlock": cidr,
            "dhcpOptionsId": "default", "instanceTenancy": "default", "isDefault": False,
            "cidrBlockAssociationSet": [{
                "associationId": "vpc-cidr-assoc-" + vpc.vpc_id.removeprefix(VPC)[:17],
                "cidrBlock": cidr, "cidrBlockState": {"state": "associated"}}],
            "ipv6CidrBlockAssociationSet": [], "tagSet": tag_set(tags)}


def render_subnet(subnet: Subnet, zone: ZoneRow | None,
                  tags: Mapping[str, str]) -> dict[str, Any]:
    """A subnet as EC2 describes it."""
    network = subnet.network
    return {"subnetId": subnet.subnet_id, "state": LIVE_STATES.get(network.state, "pending"),
            "vpcId": subnet.vpc_id, "ownerId": subnet.owner, "cidrBlock": network.cidr,
            "availableIpAddressCount": free_addresses(network),
            "availabilityZone": zone.name if zone else network.zone_id,
            "availabilityZoneId": network.zone_id, "defaultForAz": False,
            "mapPublicIpOnLaunch": False, "assignIpv6AddressOnCreation": False,
            "ipv6CidrBlockAssociationSet": [], "tagSet": tag_set(tags)}


def chosen_ids(req: Request, prefix: str, param: str, have: list[str]) -> list[str]:
    """The ids asked for (each must be among `have`), or every one."""
    wanted = req.params.members(param)
    for ec2_id in wanted:
        normal = to_ec2(prefix, from_ec2(prefix, ec2_id))
        if normal not in have:
            raise not_found(prefix, ec2_id)
    return [to_ec2(prefix, from_ec2(prefix, w)) for w in wanted] or have


_VPC_FILTERS = {
    "vpc-id": lambda v: [v["vpcId"]],
    "state": lambda v: [v["state"]],
    "is-default": lambda v: ["false"],
    "cidr": lambda v: [v["cidrBlock"]],
    "cidr-block-association.cidr-block": lambda v: [v["cidrBlock"]],
    "owner-id": lambda v: [v["ownerId"]],
    "dhcp-options-id": lambda v: [v["dhcpOptionsId"]],
    **tag_filters(lambda v: v["tagSet"]),
}


async def describe_vpcs(req: Request) -> dict[str, Any]:
    """DescribeVpcs: the caller's VPCs (by VpcId.N / filters), paged."""
    page = page_of("DescribeVpcs", req.params, ids_param="VpcId")
    vpcs = visible_vpcs(req)
    wanted = set(chosen_ids(req, VPC, "VpcId", [v.vpc_id for v in vpcs]))
    subnets = visible_subnets(req)
    tags = tags_of(req, {v.vpc_id: "" for v in vpcs})
    filters = req.params.filters()
    items = [(v, render_vpc(v, vpc_cidr(v, subnets), tags[v.vpc_id])) for v in vpcs
             if v.vpc_id in wanted]
    chosen = [(v, item) for v, item in items if matches(filters, _VPC_FILTERS, item)]
    shown, next_token = paginate(chosen, lambda r: (r[0].created_at, r[0].vpc_id), page)
    return {"vpcSet": [item for _v, item in shown], "nextToken": next_token}


def read_cidr(text: str, what: str, range_code: str) -> IPv4Network:
    try:
        block = IPv4Network(text.strip(), strict=True)
    except ValueError:
        raise Ec2Error("InvalidParameterValue", f"Value ({text[:40]}) for parameter "
                       f"cidrBlock is invalid. This is not a valid CIDR block.") from None
    if not PREFIXES[0] <= block.prefixlen <= PREFIXES[1]:
        raise Ec2Error(range_code, f"The CIDR '{block}' is invalid: a {what} is from "
                       f"/{PREFIXES[0]} to /{PREFIXES[1]}")
    return block


async def create_vpc(req: Request) -> dict[str, Any]:
    """CreateVpc: a VPC of the caller's account, in the service's own store."""
    account = req.owner()
    block = read_cidr(req.params.required("CidrBlock"), "VPC", "InvalidVpc.Range")
    specs = tag_specifications(req.params, ("vpc",))
    vpc_id = VPC + req.derived_id("CreateVpc").hex
    mine = req.platform.store.vpcs(account)
    if len(mine) >= MAX_VPCS and all(v.vpc_id != vpc_id for v in mine):
        raise Ec2Error("VpcLimitExceeded", f"The maximum number of VPCs ({MAX_VPCS}) has "
                       "been reached.")
    await req.check_dry_run()  # the service's own data, of the caller's account
    tag_new(req, vpc_id, account, specs.get("vpc", {}))
    note = req.platform.store.create_vpc(vpc_id, account, str(block))
    vpc = Vpc(note.vpc_id, note.account, None, note.cidr, note.created_at)
    return {"vpc": render_vpc(vpc, note.cidr, specs.get("vpc", {}))}


def find_vpc(req: Request, ec2_id: str) -> Vpc:
    """One of the caller's VPCs; InvalidVpcID.* otherwise."""
    normal = to_ec2(VPC, from_ec2(VPC, ec2_id))
    found = next((v for v in visible_vpcs(req) if v.vpc_id == normal), None)
    if found is None:
        raise not_found(VPC, ec2_id)
    return found


async def delete_vpc(req: Request) -> dict[str, Any]:
    """DeleteVpc: forget a VPC CreateVpc made; refused while it holds subnets."""
    vpc = find_vpc(req, req.params.required("VpcId"))
    held = [s.subnet_id for s in visible_subnets(req) if s.vpc_id == vpc.vpc_id]
    if held:
        raise Ec2Error("DependencyViolation", f"The vpc '{vpc.vpc_id}' has dependencies and "
                       f"cannot be deleted (subnets {', '.join(held[:5])})")
    if vpc.zone is not None:
        raise Ec2Error("OperationNotPermitted", f"The vpc '{vpc.vpc_id}' stands for zone "
                       f"{vpc.zone.name}'s shared networks and cannot be deleted")
    await req.check_dry_run()
    req.platform.store.delete_vpc(vpc.vpc_id)
    return {"return": True}

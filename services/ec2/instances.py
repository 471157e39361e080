"""Instance actions: RunInstances, DescribeInstances, StartInstances, StopInstances,
TerminateInstances.

An instance is a platform VM (`i-` + its id), an image a template (`ami-`), an instance type
a service offering (by name), an availability zone a zone (by name). Each launch is one
`vm.deploy` sent as the caller, with an idempotency key and a VM id fixed by the request's
ClientToken (or its request id), so a retried call launches nothing twice. Start, stop and
terminate check every id first (nothing is changed if one is unknown), skip instances already
where asked, and answer EC2's previous and current states. `TagSpecification` tags an instance
before its deploy is sent (so it never shows untagged), and its root volume once the deploy
named it. DescribeInstances pages with MaxResults/NextToken (`services.ec2.pages`).
"""

import logging
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from services.ec2.context import Outcome, Refused, Request, matches, parse_ids, refused
from services.ec2.ids import (
    IMAGE,
    INSTANCE,
    PENDING,
    SHUTTING_DOWN,
    STOPPING,
    TERMINATED,
    VOLUME,
    device_name,
    from_ec2,
    instance_state,
    not_found,
    reservation_of,
    to_ec2,
)
from services.ec2.interfaces import instance_network
from services.ec2.pages import page_of, paginate
from services.ec2.protocol import Ec2Error, timestamp
from services.ec2.store import InstanceNote
from services.ec2.subnets import launch_network
from services.ec2.tags import tag_filters, tag_new, tag_set, tag_specifications, tags_of
from services.framework.tenant_rows import VmRow, ZoneRow

log = logging.getLogger(__name__)
MAX_INSTANCES = 20
TERMINATED_VISIBLE = timedelta(hours=1)  # as EC2: terminated instances linger a while
FINAL = ("Destroyed", "Expunging", "Expunged")
DESTROYABLE = ("Running", "Stopped", "Allocated", "Error", *FINAL)
PLACEMENT_WAIT = 20.0  # seconds RunInstances waits for the planner: well inside a step's deadline
INSUFFICIENT_CAPACITY = "insufficient_capacity"  # the planner's error code for no fitting host
COMMAND_OF = {"start": "vm.start", "stop": "vm.stop", "terminate": "vm.destroy"}


def _zone(req: Request, name: str | None, default_id: str) -> ZoneRow:
    zones = req.platform.view.zones()
    if name:
        for zone in zones:
            if zone.name == name:
                return zone
        raise Ec2Error("InvalidParameterValue", f"Invalid availability zone: [{name[:60]}]")
    for zone in zones:
        if str(zone.id) == default_id:
            return zone
    if not zones:
        raise Ec2Error("InvalidParameterValue", "the platform has no availability zone yet")
    return zones[0]


async def run_instances(req: Request) -> dict[str, Any]:
    """RunInstances: deploy MaxCount VMs from an image (at least MinCount accepted)."""
    p, view, store = req.params, req.platform.view, req.platform.store
    account = req.owner()
    image = p.required("ImageId")
    template = view.template(from_ec2(IMAGE, image))
    if template is None:
        raise not_found(IMAGE, image)
    if template.state != "Ready":
        raise Ec2Error("InvalidAMIID.Unavailable", f"The image {image} is {template.state}, "
                       "not available")
    low = p.integer("MinCount", low=1, high=MAX_INSTANCES)
    high = p.integer("MaxCount", low=1, high=MAX_INSTANCES)
    if low is None or high is None:
        raise Ec2Error("MissingParameter", "The request must contain the parameters MinCount "
                       "and MaxCount")
    if low > high:
        raise Ec2Error("InvalidParameterValue", f"MinCount ({low}) is more than MaxCount "
                       f"({high})")
    offerings = view.offerings("service")
    kind = p.get("InstanceType") or (offerings[0].name if offerings else "")
    offering = next((o for o in offerings if o.name == kind), None)
    if offering is None:
        raise Ec2Error("InvalidParameterValue", f"Invalid value '{kind[:60]}' for InstanceType"
                       f" (one of: {', '.join(o.name for o in offerings)})")
    subnet = p.get("SubnetId")
    network = launch_network(req, subnet) if subnet else None
    zone = _zone(req, p.get("Placement.AvailabilityZone"),
                 network.zone_id if network else template.zone_id)
    if network is not None and network.zone_id != str(zone.id):
        raise Ec2Error("InvalidParameterValue", f"subnet {subnet} is not in availability zone "
                       f"{zone.name}")
    if str(zone.id) != template.zone_id:
        raise Ec2Error("InvalidParameterValue", f"image {image} is not in availability zone "
                       f"{zone.name}")
    key_name = p.get("KeyName")
    if key_name and not any(k.name == key_name for k in store.key_pairs(account)):
        raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{key_name[:80]}' does not "
                       "exist")
    specs = tag_specifications(p, ("instance", "volume"))
    networks = [str(network.id)] if network else []
    reservation = reservation_of(f"{account}/{req.token()}")
    await req.check_dry_run(("vm.deploy", account))
    client_token = p.get("ClientToken")
    launched: list[UUID] = []
    last: Outcome | None = None
    short: Refused | None = None  # the intake refused a deploy: no more are sent
    for index in range(high):
        vm_id = req.derived_id("RunInstances", index)
        fresh = view.vm(vm_id, None) is None  # a retry tags nothing again
        if fresh:
            tag_new(req, to_ec2(INSTANCE, vm_id), account, specs.get("instance", {}))
        store.note_instance(vm_id, reservation_id=reservation, key_name=key_name,
                            launch_index=index, client_token=client_token)
        body = {"name": to_ec2(INSTANCE, vm_id), "account": account, "zone_id": str(zone.id),
                "service_offering_id": str(offering.id), "template_id": str(template.id),
                "network_ids": networks, "vm_id": str(vm_id)}
        try:
            last = await req.platform.command(req.caller, "vm.deploy", body,
                                              idempotency_key=req.key("RunInstances", index))
        except Refused as e:
            if not launched:
                raise refused(e) from None
            short = e
            break
        launched.append(vm_id)
        root = last.result.get("volume_id") if isinstance(last.result, Mapping) else None
        if fresh and root:
            tag_new(req, to_ec2(VOLUME, root), account, specs.get("volume", {}))
    if last is not None:
        await req.platform.settle(last)
    unplaced = await _unplaced(req, launched)
    placed = [v for v in launched if v not in unplaced]
    if len(placed) < low:  # as EC2: fewer than MinCount, and none is launched
        await _undo(req, launched)
        why = short.message if short is not None and len(placed) == len(launched) \
            else "no host can take it"
        raise Ec2Error("InsufficientInstanceCapacity", f"We currently do not have sufficient "
                       f"{kind} capacity in the Availability Zone you requested ({zone.name}): "
                       f"{len(placed)} of MinCount {low} instances could be placed ({why})")
    await _undo(req, unplaced)
    rows = {v.id: v for v in view.vms(account, placed, include_expunged=True)}
    notes = store.instances(placed)
    items = [render_instance(req, rows[v], notes.get(v)) if v in rows
             else _pending(req, v, launched.index(v), template.id, kind, zone, key_name,
                           specs.get("instance", {}))
             for v in placed]
    return {"reservationId": reservation, "ownerId": account, "groupSet": [],
            "instancesSet": items}


def no_capacity(vm: VmRow) -> bool:
    """Whether the VM's deploy failed because no host could take it (it never ran)."""
    return INSUFFICIENT_CAPACITY in vm.last_error and vm.state in ("Error", *FINAL)


async def _unplaced(req: Request, vm_ids: list[UUID]) -> list[UUID]:
    """Wait (at most PLACEMENT_WAIT) until the planner placed each VM or could not; those it
    could not. One not decided by then is taken as placed: it shows as terminated, with the
    reason, if its placement fails later (`render_instance`)."""
    view = req.platform.view

    def decided() -> bool:
        return all((row := view.vm(v, None)) is not None and row.state != "Allocated"
                   for v in vm_ids)

    if vm_ids:
        await req.platform.wait_for(decided, PLACEMENT_WAIT)
    return [v for v in vm_ids if (row := view.vm(v, None)) is not None and no_capacity(row)]


async def _undo(req: Request, vm_ids: list[UUID]) -> None:
    """Destroy the VMs of a launch that is refused (as the caller, once per launch: the key
    is the request's); each is shown terminated."""
    view = req.platform.view

    def destroyable() -> bool:
        return all((row := view.vm(v, None)) is None or row.state in DESTROYABLE
                   for v in vm_ids)

    if vm_ids:  # one being placed or started is destroyed once it is up
        await req.platform.wait_for(destroyable, PLACEMENT_WAIT)
    for vm_id in vm_ids:
        row = view.vm(vm_id, None)
        if row is not None and row.state in FINAL:
            continue
        try:
            await req.platform.command(req.caller, "vm.destroy", {"vm_id": str(vm_id)},
                                       idempotency_key=req.key("RunInstances.undo", vm_id))
        except Refused as e:
            log.warning("ec2: a refused launch's VM %s is left %s: %s", vm_id,
                        row.state if row else "unknown", e.message)
            continue
        req.platform.store.mark_terminating(vm_id)


def _pending(req: Request, vm_id: UUID, index: int, template_id: UUID, kind: str,
             zone: ZoneRow, key_name: str | None, tags: dict[str, str]) -> dict[str, Any]:
    """An instance the view has not shown yet, as the launch asked for it."""
    return {"instanceId": to_ec2(INSTANCE, vm_id), "imageId": to_ec2(IMAGE, template_id),
            "instanceState": {"code": PENDING[0], "name": PENDING[1]}, "keyName": key_name,
            "amiLaunchIndex": index, "instanceType": kind,
            "launchTime": datetime.now(UTC), "placement": {"availabilityZone": zone.name,
                                                          "tenancy": "default"},
            "monitoring": {"state": "disabled"}, "rootDeviceType": "ebs",
            "rootDeviceName": device_name(0), "tagSet": tag_set(tags)}


def render_instance(req: Request, vm: VmRow, note: InstanceNote | None,
                    tags: dict[str, str] | None = None) -> dict[str, Any]:
    """An instance as EC2 describes it (`tags`: its tags, when already read)."""
    view, store = req.platform.view, req.platform.store
    code, name = TERMINATED if no_capacity(vm) else \
        instance_state(vm.state, bool(note and note.terminating))
    offering = view.offering(UUID(vm.offering_id))
    zone = next((z.name for z in view.zones() if str(z.id) == vm.zone_id), vm.zone_id)
    devices = []
    for volume in view.vm_volumes(vm.id):
        device = store.attachment_device(volume.id, vm.id) or device_name(volume.device_id)
        devices.append({"deviceName": device, "ebs": {
            "volumeId": to_ec2("vol-", volume.id),
            "status": "attaching" if volume.state == "Attaching" else "attached",
            "attachTime": timestamp(volume.attached_at),
            "deleteOnTermination": volume.volume_type == "ROOT"}})
    out: dict[str, Any] = {
        "instanceId": to_ec2(INSTANCE, vm.id), "imageId": to_ec2(IMAGE, vm.template_id),
        "instanceState": {"code": code, "name": name}, "privateDnsName": "", "dnsName": "",
        "reason": vm.last_error, "keyName": note.key_name if note else None,
        "amiLaunchIndex": note.launch_index if note else 0, "productCodes": [],
        "instanceType": offering.name if offering else vm.offering_id,
        "launchTime": timestamp(vm.created_at),
        "placement": {"availabilityZone": zone, "groupName": "", "tenancy": "default"},
        "monitoring": {"state": "disabled"}, "groupSet": [], "architecture": "x86_64",
        "rootDeviceType": "ebs", "rootDeviceName": device_name(0),
        "blockDeviceMapping": devices, "virtualizationType": "hvm",
        "clientToken": (note.client_token or "") if note else "", "hypervisor": "xen",
        "tagSet": tag_set(tags if tags is not None else
                          tags_of(req, {to_ec2(INSTANCE, vm.id): vm.name})[
                              to_ec2(INSTANCE, vm.id)]),
    }
    out.update(instance_network(vm, view.vm_nics([vm.id]).get(vm.id, [])))
    if no_capacity(vm):  # as EC2 shows a launch that failed once accepted
        out["stateReason"] = {"code": "Server.InsufficientInstanceCapacity",
                              "message": f"Server.InsufficientInstanceCapacity: "
                                         f"{vm.last_error}"}
    elif vm.state == "Error":
        out["stateReason"] = {"code": "Server.InternalError", "message": vm.last_error}
    return out


_INSTANCE_FILTERS = {
    "instance-id": lambda r: [to_ec2(INSTANCE, r[0].id)],
    "instance-state-name": lambda r: [r[1]["instanceState"]["name"]],
    "instance-state-code": lambda r: [r[1]["instanceState"]["code"]],
    "image-id": lambda r: [r[1]["imageId"]],
    "instance-type": lambda r: [r[1]["instanceType"]],
    "availability-zone": lambda r: [r[1]["placement"]["availabilityZone"]],
    "key-name": lambda r: [r[1]["keyName"]],
    "reservation-id": lambda r: [r[2]],
    **tag_filters(lambda r: r[1]["tagSet"]),
    "block-device-mapping.volume-id": lambda r: [d["ebs"]["volumeId"]
                                                 for d in r[1]["blockDeviceMapping"]],
    "private-ip-address": lambda r: [r[1]["privateIpAddress"]],
    "private-dns-name": lambda r: [r[1]["privateDnsName"]],
    "subnet-id": lambda r: [n["subnetId"] for n in r[1]["networkInterfaceSet"]],
    "network-interface.network-interface-id": lambda r: [
        n["networkInterfaceId"] for n in r[1]["networkInterfaceSet"]],
    "network-interface.mac-address": lambda r: [n["macAddress"]
                                                for n in r[1]["networkInterfaceSet"]],
    "network-interface.addresses.private-ip-address": lambda r: [
        n["privateIpAddress"] for n in r[1]["networkInterfaceSet"]],
}


def visible(vm: VmRow, now: datetime) -> bool:
    """Whether an instance is still shown: not terminated, or terminated lately."""
    if vm.state != "Expunged":
        return True
    try:
        at = datetime.fromisoformat(vm.updated_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    return now - at < TERMINATED_VISIBLE


def described_vms(req: Request, wanted: list[str]) -> list[VmRow]:
    """The caller's instances a Describe names (each must exist), or every one still shown
    (terminated ones for a while) when it names none."""
    view = req.platform.view
    ids = parse_ids(INSTANCE, wanted) if wanted else None
    vms = view.vms(req.account, ids, include_expunged=True)
    if ids is not None:
        have = {v.id for v in vms}
        missing = [w for w, i in zip(wanted, ids, strict=True) if i not in have]
        if missing:
            raise Ec2Error("InvalidInstanceID.NotFound", f"The instance IDs '"
                           f"{', '.join(m[:40] for m in missing[:20])}' do not exist")
    else:
        now = datetime.now(UTC)
        vms = [v for v in vms if visible(v, now)]
    return vms


async def describe_instances(req: Request) -> dict[str, Any]:
    """DescribeInstances: the account's instances, grouped by reservation."""
    store = req.platform.store
    wanted = req.params.members("InstanceId")
    vms = described_vms(req, wanted)
    page = page_of("DescribeInstances", req.params, ids_param="InstanceId")
    notes = store.instances([v.id for v in vms])
    tags = tags_of(req, {to_ec2(INSTANCE, v.id): v.name for v in vms})
    filters = req.params.filters()
    chosen = []
    for vm in vms:
        note = notes.get(vm.id)
        reservation = note.reservation_id if note and note.reservation_id \
            else reservation_of(str(vm.id))
        item = render_instance(req, vm, note, tags[to_ec2(INSTANCE, vm.id)])
        if matches(filters, _INSTANCE_FILTERS, (vm, item, reservation)):
            chosen.append((vm, item, reservation))
    shown, next_token = paginate(chosen, lambda r: (r[0].created_at, str(r[0].id)), page)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    owners: dict[str, str] = {}
    for vm, item, reservation in shown:
        groups[reservation].append(item)
        owners[reservation] = vm.account
    return {"reservationSet": [{"reservationId": r, "ownerId": owners[r], "groupSet": [],
                                "instancesSet": items} for r, items in groups.items()],
            "nextToken": next_token}


async def _change(req: Request, verb: str) -> dict[str, Any]:
    wanted = req.params.members("InstanceId")
    if not wanted:
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    ids = parse_ids(INSTANCE, wanted)
    view, store = req.platform.view, req.platform.store
    vms = []
    for ec2_id, vm_id in zip(wanted, ids, strict=True):
        vm = view.vm(vm_id, req.account)
        if vm is None:
            raise not_found(INSTANCE, ec2_id)
        vms.append(vm)
    if verb == "stop":
        req.params.boolean("Force")  # checked before anything is sent
    await req.check_dry_run(*((COMMAND_OF[verb], vm.account) for vm in vms))
    notes = store.instances(ids)
    before = {vm.id: instance_state(vm.state, bool(notes.get(vm.id) and
                                                   notes[vm.id].terminating)) for vm in vms}
    sent: list[tuple[UUID, Outcome | None]] = []
    for vm in vms:
        sent.append((vm.id, await _send(req, verb, vm)))
    for _vm_id, outcome in sent:
        if outcome is not None:
            await req.platform.settle(outcome)
    notes = store.instances(ids)
    expected = {"start": PENDING, "stop": STOPPING, "terminate": SHUTTING_DOWN}[verb]
    items = []
    for vm_id, outcome in sent:
        row = view.vm(vm_id, req.account)
        note = notes.get(vm_id)
        now = instance_state(row.state, bool(note and note.terminating)) if row \
            else before[vm_id]
        if outcome is not None and now == before[vm_id]:
            now = expected  # the platform has not shown the change yet
        items.append({"instanceId": to_ec2(INSTANCE, vm_id),
                      "currentState": {"code": now[0], "name": now[1]},
                      "previousState": {"code": before[vm_id][0], "name": before[vm_id][1]}})
    return {"instancesSet": items}


async def _send(req: Request, verb: str, vm: VmRow) -> Outcome | None:
    """The command for one instance, or None when it is already where asked."""
    body: dict[str, Any]
    if verb == "start":
        if vm.state in ("Running", "Starting", "Migrating", "Allocated"):
            return None
        tag, body = "vm.start", {"vm_id": str(vm.id)}
    elif verb == "stop":
        if vm.state in ("Stopped", "Stopping"):
            return None
        force = req.params.boolean("Force")
        tag, body = "vm.stop", {"vm_id": str(vm.id),
                                "force_after_seconds": 0.0 if force else 60.0}
    else:
        if vm.state in FINAL:
            return None
        tag, body = "vm.destroy", {"vm_id": str(vm.id)}
    if verb != "terminate" and vm.state in FINAL:
        raise Ec2Error("IncorrectInstanceState", f"The instance '{to_ec2(INSTANCE, vm.id)}' "
                       f"is not in a state from which it can be {verb}ed.")
    try:
        outcome = await req.platform.command(req.caller, tag, body,
                                             idempotency_key=req.key(tag, vm.id))
    except Refused as e:
        raise refused(e, invalid="IncorrectInstanceState",
                      not_found=not_found(INSTANCE, to_ec2(INSTANCE, vm.id))) from None
    if verb == "terminate":  # only once accepted: a refused one leaves it as it was
        req.platform.store.mark_terminating(vm.id)
    return outcome


async def start_instances(req: Request) -> dict[str, Any]:
    """StartInstances: start stopped instances."""
    return await _change(req, "start")


async def stop_instances(req: Request) -> dict[str, Any]:
    """StopInstances: stop running instances (Force: at once)."""
    return await _change(req, "stop")


async def terminate_instances(req: Request) -> dict[str, Any]:
    """TerminateInstances: destroy instances (their root volumes go with them)."""
    return await _change(req, "terminate")

"""Volume and snapshot actions: CreateVolume, AttachVolume, DetachVolume, DeleteVolume,
DescribeVolumes, CreateSnapshot, DescribeSnapshots.

A volume is a platform volume (`vol-`), a snapshot a volume snapshot (`snap-`). Sizes are
GiB, as in EC2. The device a volume is attached as is the platform's next free slot; the name
the caller asked for is remembered and shown back. `TagSpecification` tags a volume or a
snapshot before its command is sent; DescribeVolumes and DescribeSnapshots page with
MaxResults/NextToken.
"""

from typing import Any
from uuid import UUID

from services.ec2.context import Refused, Request, matches, parse_ids, refused
from services.ec2.ids import (
    INSTANCE,
    SNAPSHOT,
    SNAPSHOT_STATES,
    VOLUME,
    VOLUME_STATES,
    device_name,
    from_ec2,
    not_found,
    to_ec2,
)
from services.ec2.pages import page_of, paginate
from services.ec2.protocol import Ec2Error, timestamp
from services.ec2.tags import tag_filters, tag_new, tag_set, tag_specifications, tags_of
from services.framework.tenant_rows import SnapshotRow, VolumeRow

GIB = 1024**3
MAX_GIB = 16384


def gib(size_bytes: int | None) -> int:
    """Bytes as whole GiB, rounded up."""
    return -(-(size_bytes or 0) // GIB)


def _zone_name(req: Request, zone_id: str) -> str:
    return next((z.name for z in req.platform.view.zones() if str(z.id) == zone_id), zone_id)


def _volume(req: Request, ec2_id: str) -> VolumeRow:
    found = req.platform.view.volume(from_ec2(VOLUME, ec2_id), req.account)
    if found is None or found.state == "Expunged":
        raise not_found(VOLUME, ec2_id)
    return found


def render_volume(req: Request, volume: VolumeRow,
                  tags: dict[str, str] | None = None) -> dict[str, Any]:
    """A volume as EC2 describes it (`tags`: its tags, when already read)."""
    ec2_id = to_ec2(VOLUME, volume.id)
    if tags is None:
        tags = tags_of(req, {ec2_id: volume.name})[ec2_id]
    attachments = []
    if volume.vm_id is not None:
        vm_id = UUID(volume.vm_id)
        device = req.platform.store.attachment_device(volume.id, vm_id) \
            or device_name(volume.device_id)
        attachments.append({
            "volumeId": to_ec2(VOLUME, volume.id), "instanceId": to_ec2(INSTANCE, vm_id),
            "device": device,
            "status": "attaching" if volume.state == "Attaching" else "attached",
            "attachTime": timestamp(volume.attached_at),
            "deleteOnTermination": volume.volume_type == "ROOT"})
    status = VOLUME_STATES.get(volume.state, "error")
    if status == "available" and volume.vm_id is not None:
        status = "in-use"
    return {"volumeId": ec2_id, "size": gib(volume.size_bytes),
            "snapshotId": "", "availabilityZone": _zone_name(req, volume.zone_id),
            "status": status, "createTime": timestamp(volume.created_at),
            "attachmentSet": attachments, "volumeType": "standard", "encrypted": False,
            "multiAttachEnabled": False,
            "tagSet": tag_set(tags)}


async def create_volume(req: Request) -> dict[str, Any]:
    """CreateVolume: a blank data volume of Size GiB in an availability zone."""
    p, view = req.params, req.platform.view
    account = req.owner()
    if p.get("SnapshotId"):
        raise Ec2Error("UnsupportedOperation", "creating a volume from a snapshot is not "
                       "supported; give Size")
    size = p.integer("Size", low=1, high=MAX_GIB)
    if size is None:
        raise Ec2Error("MissingParameter", "The request must contain the parameter Size")
    zone_name = p.required("AvailabilityZone")
    zone = next((z for z in view.zones() if z.name == zone_name), None)
    if zone is None:
        raise Ec2Error("InvalidParameterValue", f"Invalid availability zone: "
                       f"[{zone_name[:60]}]")
    specs = tag_specifications(p, ("volume",))
    await req.check_dry_run(("volume.create", account))
    volume_id = req.derived_id("CreateVolume")
    if view.volume(volume_id, None) is None:  # a retry tags nothing again
        tag_new(req, to_ec2(VOLUME, volume_id), account, specs.get("volume", {}))
    body = {"name": to_ec2(VOLUME, volume_id), "account": account, "zone_id": str(zone.id),
            "size_bytes": size * GIB, "volume_id": str(volume_id)}
    try:
        outcome = await req.platform.command(req.caller, "volume.create", body,
                                             idempotency_key=req.key("CreateVolume"))
    except Refused as e:
        raise refused(e) from None
    await req.platform.settle(outcome)
    row = view.volume(volume_id, account)
    if row is not None:
        out = render_volume(req, row)
        out.pop("attachmentSet")
        return out
    return {"volumeId": to_ec2(VOLUME, volume_id), "size": size, "snapshotId": "",
            "availabilityZone": zone.name, "status": "creating", "volumeType": "standard",
            "encrypted": False, "tagSet": tag_set(specs.get("volume", {}))}


async def attach_volume(req: Request) -> dict[str, Any]:
    """AttachVolume: attach an available volume to a running instance as Device."""
    p, view = req.params, req.platform.view
    volume_ec2, instance_ec2 = p.required("VolumeId"), p.required("InstanceId")
    device = p.required("Device")
    volume = _volume(req, volume_ec2)
    vm = view.vm(from_ec2(INSTANCE, instance_ec2), req.account)
    if vm is None or vm.state == "Expunged":
        raise not_found(INSTANCE, instance_ec2)
    await req.check_dry_run(("volume.attach", volume.account))
    if volume.vm_id is not None:
        raise Ec2Error("VolumeInUse", f"{volume_ec2} is already attached to an instance")
    req.platform.store.note_attachment(volume.id, vm.id, device)
    try:
        outcome = await req.platform.command(
            req.caller, "volume.attach", {"volume_id": str(volume.id), "vm_id": str(vm.id)},
            idempotency_key=req.key("AttachVolume", volume.id, vm.id))
    except Refused as e:
        raise refused(e, invalid="IncorrectState", not_found=not_found(VOLUME, volume_ec2)) \
            from None
    await req.platform.settle(outcome)
    row = view.volume(volume.id, req.account)
    attached = row is not None and row.vm_id == str(vm.id) and row.state == "Ready"
    return {"volumeId": volume_ec2, "instanceId": instance_ec2, "device": device,
            "status": "attached" if attached else "attaching",
            "attachTime": timestamp(row.attached_at if row else None)}


async def detach_volume(req: Request) -> dict[str, Any]:
    """DetachVolume: detach a data volume from its instance."""
    p = req.params
    volume_ec2 = p.required("VolumeId")
    volume = _volume(req, volume_ec2)
    instance = p.get("InstanceId")
    asked = from_ec2(INSTANCE, instance) if instance else None
    await req.check_dry_run(("volume.detach", volume.account))
    if volume.vm_id is None:
        raise Ec2Error("IncorrectState", f"Volume '{volume_ec2}' is in the 'available' state.")
    vm_id = UUID(volume.vm_id)
    if asked is not None and asked != vm_id:
        raise Ec2Error("InvalidAttachment.NotFound", f"Volume '{volume_ec2}' is not attached "
                       f"to instance '{instance}'")
    device = req.platform.store.attachment_device(volume.id, vm_id) \
        or device_name(volume.device_id)
    try:
        outcome = await req.platform.command(
            req.caller, "volume.detach", {"volume_id": str(volume.id)},
            idempotency_key=req.key("DetachVolume", volume.id))
    except Refused as e:
        raise refused(e, invalid="IncorrectState", not_found=not_found(VOLUME, volume_ec2)) \
            from None
    await req.platform.settle(outcome)
    return {"volumeId": volume_ec2, "instanceId": to_ec2(INSTANCE, vm_id), "device": device,
            "status": "detaching", "attachTime": timestamp(volume.attached_at)}


async def delete_volume(req: Request) -> dict[str, Any]:
    """DeleteVolume: delete a detached data volume."""
    volume_ec2 = req.params.required("VolumeId")
    volume = _volume(req, volume_ec2)
    await req.check_dry_run(("volume.delete", volume.account))
    if volume.vm_id is not None:
        raise Ec2Error("VolumeInUse", f"Volume {volume_ec2} is currently attached to "
                       f"{to_ec2(INSTANCE, volume.vm_id)}")
    try:
        outcome = await req.platform.command(
            req.caller, "volume.delete", {"volume_id": str(volume.id)},
            idempotency_key=req.key("DeleteVolume", volume.id))
    except Refused as e:
        raise refused(e, invalid="IncorrectState", not_found=not_found(VOLUME, volume_ec2)) \
            from None
    await req.platform.settle(outcome)
    return {"return": True}


_VOLUME_FILTERS = {
    "volume-id": lambda v: [v["volumeId"]],
    "status": lambda v: [v["status"]],
    "availability-zone": lambda v: [v["availabilityZone"]],
    "size": lambda v: [v["size"]],
    "attachment.instance-id": lambda v: [a["instanceId"] for a in v["attachmentSet"]],
    "attachment.status": lambda v: [a["status"] for a in v["attachmentSet"]],
    "attachment.device": lambda v: [a["device"] for a in v["attachmentSet"]],
    **tag_filters(lambda v: v["tagSet"]),
}


async def describe_volumes(req: Request) -> dict[str, Any]:
    """DescribeVolumes: the account's volumes with their attachments."""
    wanted = req.params.members("VolumeId")
    ids = parse_ids(VOLUME, wanted) if wanted else None
    rows = req.platform.view.volumes(req.account, ids)
    if ids is not None:
        have = {v.id for v in rows}
        missing = [w for w, i in zip(wanted, ids, strict=True) if i not in have]
        if missing:
            raise Ec2Error("InvalidVolume.NotFound", f"The volume '{missing[0][:60]}' does "
                           "not exist.")
    page = page_of("DescribeVolumes", req.params, ids_param="VolumeId")
    filters = req.params.filters()
    tags = tags_of(req, {to_ec2(VOLUME, v.id): v.name for v in rows})
    chosen = [(v, item) for v in rows
              if matches(filters, _VOLUME_FILTERS,
                         item := render_volume(req, v, tags[to_ec2(VOLUME, v.id)]))]
    shown, next_token = paginate(chosen, lambda r: (r[0].created_at, str(r[0].id)), page)
    return {"volumeSet": [item for _, item in shown], "nextToken": next_token}


def render_snapshot(req: Request, snapshot: SnapshotRow,
                    tags: dict[str, str] | None = None) -> dict[str, Any]:
    """A snapshot as EC2 describes it (`tags`: its tags, when already read)."""
    status = SNAPSHOT_STATES.get(snapshot.state, "error")
    ec2_id = to_ec2(SNAPSHOT, snapshot.id)
    if tags is None:  # a snapshot's platform name is its description, not a tag
        tags = tags_of(req, {ec2_id: ""})[ec2_id]
    return {"snapshotId": ec2_id,
            "volumeId": to_ec2(VOLUME, snapshot.volume_id), "status": status,
            "startTime": timestamp(snapshot.created_at),
            "progress": "100%" if status == "completed" else "0%",
            "ownerId": snapshot.account, "volumeSize": gib(snapshot.volume_size_bytes),
            "description": snapshot.name, "encrypted": False, "tagSet": tag_set(tags)}


async def create_snapshot(req: Request) -> dict[str, Any]:
    """CreateSnapshot: a snapshot of a volume."""
    volume_ec2 = req.params.required("VolumeId")
    volume = _volume(req, volume_ec2)
    specs = tag_specifications(req.params, ("snapshot",))
    description = req.params.get("Description")
    await req.check_dry_run(("volume.snapshot", volume.account))
    snapshot_id = req.derived_id("CreateSnapshot", volume.id)
    if req.platform.view.snapshot(snapshot_id, None) is None:  # a retry tags nothing again
        tag_new(req, to_ec2(SNAPSHOT, snapshot_id), volume.account, specs.get("snapshot", {}))
    body: dict[str, Any] = {"volume_id": str(volume.id), "snapshot_id": str(snapshot_id)}
    if description:
        body["name"] = description[:255]
    try:
        outcome = await req.platform.command(
            req.caller, "volume.snapshot", body,
            idempotency_key=req.key("CreateSnapshot", volume.id))
    except Refused as e:
        raise refused(e, invalid="IncorrectState", not_found=not_found(VOLUME, volume_ec2)) \
            from None
    await req.platform.settle(outcome)
    row = req.platform.view.snapshot(snapshot_id, req.account)
    if row is not None:
        return render_snapshot(req, row)
    return {"snapshotId": to_ec2(SNAPSHOT, snapshot_id), "volumeId": volume_ec2,
            "status": "pending", "progress": "0%", "ownerId": volume.account,
            "volumeSize": gib(volume.size_bytes), "description": description or "",
            "encrypted": False, "tagSet": tag_set(specs.get("snapshot", {}))}


_SNAPSHOT_FILTERS = {
    "snapshot-id": lambda s: [s["snapshotId"]],
    "volume-id": lambda s: [s["volumeId"]],
    "status": lambda s: [s["status"]],
    "owner-id": lambda s: [s["ownerId"]],
    **tag_filters(lambda s: s["tagSet"]),
}


async def describe_snapshots(req: Request) -> dict[str, Any]:
    """DescribeSnapshots: the account's snapshots."""
    wanted = req.params.members("SnapshotId")
    ids = parse_ids(SNAPSHOT, wanted) if wanted else None
    rows = req.platform.view.snapshots(req.account, ids)
    if ids is not None and len(rows) < len(set(ids)):
        have = {s.id for s in rows}
        missing = next(w for w, i in zip(wanted, ids, strict=True) if i not in have)
        raise not_found(SNAPSHOT, missing)
    page = page_of("DescribeSnapshots", req.params, ids_param="SnapshotId")
    filters = req.params.filters()
    rows = [s for s in rows if s.state != "Destroyed"]
    tags = tags_of(req, {to_ec2(SNAPSHOT, s.id): "" for s in rows})
    chosen = [(s, item) for s in rows
              if matches(filters, _SNAPSHOT_FILTERS,
                         item := render_snapshot(req, s, tags[to_ec2(SNAPSHOT, s.id)]))]
    shown, next_token = paginate(chosen, lambda r: (r[0].created_at, str(r[0].id)), page)
    return {"snapshotSet": [item for _, item in shown], "nextToken": next_token}

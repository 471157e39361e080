"""Catalog actions: DescribeImages (templates), DescribeAvailabilityZones (zones),
DescribeRegions (the service's one region). Every account sees the same catalog."""

from typing import Any

from services.ec2.context import Request, matches, parse_ids
from services.ec2.ids import IMAGE, IMAGE_STATES, device_name, to_ec2
from services.ec2.protocol import Ec2Error, timestamp
from services.framework.tenant_rows import TemplateRow

OWNER = "cloudkernel"


def render_image(req: Request, template: TemplateRow) -> dict[str, Any]:
    """A template as EC2 describes an image."""
    zone = next((z.name for z in req.platform.view.zones() if str(z.id) == template.zone_id),
                template.zone_id)
    return {"imageId": to_ec2(IMAGE, template.id), "imageLocation": f"{zone}/{template.name}",
            "imageState": IMAGE_STATES.get(template.state, "failed"), "imageOwnerId": OWNER,
            "creationDate": timestamp(template.created_at), "isPublic": True,
            "architecture": "x86_64", "imageType": "machine", "name": template.name,
            "description": template.os_type, "rootDeviceType": "ebs",
            "rootDeviceName": device_name(0), "blockDeviceMapping": [],
            "virtualizationType": "hvm", "hypervisor": "xen",
            "platformDetails": "Linux/UNIX"}


_IMAGE_FILTERS = {
    "image-id": lambda i: [i["imageId"]],
    "name": lambda i: [i["name"]],
    "state": lambda i: [i["imageState"]],
    "description": lambda i: [i["description"]],
    "owner-id": lambda i: [i["imageOwnerId"]],
    "is-public": lambda i: ["true"],
    "architecture": lambda i: [i["architecture"]],
}


async def describe_images(req: Request) -> dict[str, Any]:
    """DescribeImages: the platform's templates."""
    wanted = req.params.members("ImageId")
    ids = parse_ids(IMAGE, wanted) if wanted else None
    rows = req.platform.view.templates(ids)
    if ids is not None:
        have = {t.id for t in rows}
        missing = [w for w, i in zip(wanted, ids, strict=True) if i not in have]
        if missing:
            raise Ec2Error("InvalidAMIID.NotFound", f"The image id '[{missing[0][:60]}]' "
                           "does not exist")
    owners = req.params.members("Owner")
    filters = req.params.filters()
    items = [render_image(req, t) for t in rows]
    return {"imagesSet": [i for i in items if matches(filters, _IMAGE_FILTERS, i)
                          and (not owners or {"self", OWNER, "amazon"} & set(owners))]}


async def describe_availability_zones(req: Request) -> dict[str, Any]:
    """DescribeAvailabilityZones: the platform's zones."""
    names = req.params.members("ZoneName")
    zones = req.platform.view.zones()
    known = {z.name for z in zones}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise Ec2Error("InvalidParameterValue", f"Invalid availability zone: "
                       f"[{unknown[0][:60]}]")
    return {"availabilityZoneInfo": [
        {"zoneName": z.name, "zoneState": "available" if z.allocation_state == "Enabled"
         else "unavailable", "regionName": req.platform.region, "zoneId": str(z.id),
         "zoneType": "availability-zone", "messageSet": []}
        for z in zones if not names or z.name in names]}


async def describe_regions(req: Request) -> dict[str, Any]:
    """DescribeRegions: the one region this service is."""
    return {"regionInfo": [{"regionName": req.platform.region, "regionEndpoint": "",
                            "optInStatus": "opt-in-not-required"}]}

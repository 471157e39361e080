"""DescribeInstanceStatus and DescribeInstanceAttribute.

An instance's status checks come from what the platform knows of its VM, no more:
* `systemStatus` (the host side): `ok` while the platform has the domain running on a host
  (its hypervisor reported it started, or it is being live-migrated), `initializing` while it
  is being placed or started, `not-applicable` when it is not running (stopping, stopped,
  failed, terminated).
* `instanceStatus` (the guest side): the platform does not probe the guest OS, so it is the
  same as the system status: a running domain is `ok`. A tool that waits for `ok` (boto3's
  `instance_status_ok` waiter) proceeds once the VM runs, not once its services answer.
Without IncludeAllInstances only running instances are answered, as in EC2. There are no
scheduled events.

DescribeInstanceAttribute answers one attribute of an instance, from what DescribeInstances
shows of it; what the platform has no notion of has EC2's default value (termination and stop
protection off, shutdown from the guest stops it, no kernel or ramdisk). User data is empty:
RunInstances does not take any yet.
"""

from datetime import UTC, datetime
from typing import Any

from services.ec2.context import Request, matches
from services.ec2.ids import INSTANCE, RUNNING, from_ec2, not_found, to_ec2
from services.ec2.instances import described_vms, render_instance, visible
from services.ec2.pages import page_of, paginate
from services.ec2.protocol import Ec2Error
from services.framework.tenant_rows import VmRow

OK, INITIALIZING, NOT_APPLICABLE = "ok", "initializing", "not-applicable"
_CHECK = {OK: "passed", INITIALIZING: "initializing"}  # a summary's reachability detail


def status_of(vm: VmRow, state_name: str) -> str:
    """The status checks' summary for a VM in this EC2 state."""
    if state_name == "running" and vm.state in ("Running", "Migrating"):
        return OK
    if state_name == "pending":
        return INITIALIZING
    return NOT_APPLICABLE


def _summary(status: str) -> dict[str, Any]:
    details = [{"name": "reachability", "status": _CHECK[status]}] if status in _CHECK else []
    return {"status": status, "details": details}


def render_status(vm: VmRow, instance: dict[str, Any]) -> dict[str, Any]:
    """An instance's status as EC2 describes it (`instance`: as DescribeInstances shows it)."""
    status = status_of(vm, instance["instanceState"]["name"])
    return {"instanceId": instance["instanceId"],
            "availabilityZone": instance["placement"]["availabilityZone"],
            "availabilityZoneId": vm.zone_id, "eventsSet": [],
            "instanceState": instance["instanceState"],
            "systemStatus": _summary(status), "instanceStatus": _summary(status)}


_STATUS_FILTERS = {
    "instance-id": lambda s: [s["instanceId"]],
    "availability-zone": lambda s: [s["availabilityZone"]],
    "instance-state-name": lambda s: [s["instanceState"]["name"]],
    "instance-state-code": lambda s: [s["instanceState"]["code"]],
    "system-status.status": lambda s: [s["systemStatus"]["status"]],
    "system-status.reachability": lambda s: [d["status"] for d in s["systemStatus"]["details"]],
    "instance-status.status": lambda s: [s["instanceStatus"]["status"]],
    "instance-status.reachability": lambda s: [d["status"]
                                               for d in s["instanceStatus"]["details"]],
    "event.code": lambda s: [e["code"] for e in s["eventsSet"]],
    "event.description": lambda s: [e["description"] for e in s["eventsSet"]],
}


async def describe_instance_status(req: Request) -> dict[str, Any]:
    """DescribeInstanceStatus: the account's instances' status checks (running ones only,
    unless IncludeAllInstances)."""
    store = req.platform.store
    wanted = req.params.members("InstanceId")
    every = req.params.boolean("IncludeAllInstances")
    vms = described_vms(req, wanted)
    page = page_of("DescribeInstanceStatus", req.params, ids_param="InstanceId")
    filters = req.params.filters()
    notes = store.instances([v.id for v in vms])
    chosen = []
    for vm in vms:
        instance = render_instance(req, vm, notes.get(vm.id), {})
        if not every and instance["instanceState"]["code"] != RUNNING[0]:
            continue
        item = render_status(vm, instance)
        if matches(filters, _STATUS_FILTERS, item):
            chosen.append((vm, item))
    shown, next_token = paginate(chosen, lambda r: (r[0].created_at, str(r[0].id)), page)
    return {"instanceStatusSet": [item for _, item in shown], "nextToken": next_token}


def _value(value: Any) -> dict[str, Any]:
    return {"value": value}


# attribute -> its element and value, from the instance as DescribeInstances shows it
_ATTRIBUTES = {
    "instanceType": lambda i: _value(i["instanceType"]),
    "kernel": lambda i: _value(None),
    "ramdisk": lambda i: _value(None),
    "userData": lambda i: _value(None),
    "disableApiTermination": lambda i: _value(False),
    "disableApiStop": lambda i: _value(False),
    "instanceInitiatedShutdownBehavior": lambda i: _value("stop"),
    "rootDeviceName": lambda i: _value(i["rootDeviceName"]),
    "blockDeviceMapping": lambda i: i["blockDeviceMapping"],
    "productCodes": lambda i: i["productCodes"],
    "sourceDestCheck": lambda i: _value(True),
    "groupSet": lambda i: i["groupSet"],
    "ebsOptimized": lambda i: _value(False),
    "enaSupport": lambda i: _value(False),
    "sriovNetSupport": lambda i: _value(None),
    "enclaveOptions": lambda i: {"enabled": False},
}


async def describe_instance_attribute(req: Request) -> dict[str, Any]:
    """DescribeInstanceAttribute: one attribute of one of the account's instances."""
    ec2_id = req.params.required("InstanceId")
    attribute = req.params.required("Attribute")
    vm_id = from_ec2(INSTANCE, ec2_id)
    if attribute not in _ATTRIBUTES:
        raise Ec2Error("InvalidParameterValue", f"Value ({attribute[:60]}) for parameter "
                       f"attribute is invalid. Expected one of: {', '.join(_ATTRIBUTES)}")
    vm = req.platform.view.vm(vm_id, req.account)
    if vm is None or not visible(vm, datetime.now(UTC)):
        raise not_found(INSTANCE, ec2_id)
    note = req.platform.store.instances([vm.id]).get(vm.id)
    instance = render_instance(req, vm, note, {})
    return {"instanceId": to_ec2(INSTANCE, vm.id), attribute: _ATTRIBUTES[attribute](instance)}

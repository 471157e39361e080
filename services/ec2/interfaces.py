"""An instance's network interfaces as EC2 shows them: the VM's NICs from the tenant view.

A NIC is an elastic network interface (`eni-` + its id), attached at its device slot. Its
address is the one the network handed it (none while it holds none). Its private DNS name is
the VM's name when that is a DNS label: the name the network's DNS (the host entry the
platform writes beside the DHCP lease) answers inside the network; EC2's own
`ip-a-b-c-d.<region>.compute.internal` would resolve nowhere here. The instance's
`privateIpAddress` and `privateDnsName` are those of its primary interface (device 0). A
subnet is the NIC's network (`subnet-` + its id, as RunInstances' SubnetId takes it).
"""

import re
from typing import Any
from uuid import UUID

from services.ec2.ids import to_ec2
from services.ec2.protocol import timestamp
from services.framework.tenant_rows import NicRow, VmRow

INTERFACE, ATTACHMENT, SUBNET = "eni-", "eni-attach-", "subnet-"
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def private_dns_name(vm: VmRow, nic: NicRow) -> str:
    """The name the network's DNS answers for this NIC's address ("" if none)."""
    return vm.name if nic.ip and _DNS_LABEL.match(vm.name) else ""


def subnet_of(nic: NicRow) -> str | None:
    """The NIC's network as a subnet id."""
    return to_ec2(SUBNET, nic.network_id) if nic.network_id else None


def render_interface(vm: VmRow, nic: NicRow) -> dict[str, Any]:
    """One NIC as EC2 describes an instance's network interface."""
    dns = private_dns_name(vm, nic)
    return {
        "networkInterfaceId": to_ec2(INTERFACE, nic.id), "subnetId": subnet_of(nic),
        "description": "", "ownerId": vm.account, "status": "in-use",
        "macAddress": nic.mac, "privateIpAddress": nic.ip, "privateDnsName": dns,
        "sourceDestCheck": True, "groupSet": [],
        "attachment": {"attachmentId": to_ec2(ATTACHMENT, nic.id),
                       "deviceIndex": nic.device_id, "status": "attached",
                       "attachTime": timestamp(nic.created_at),
                       "deleteOnTermination": True, "networkCardIndex": 0},
        "privateIpAddressesSet": [{"privateIpAddress": nic.ip, "privateDnsName": dns,
                                   "primary": True}] if nic.ip else [],
        "interfaceType": "interface",
    }


def primary(nics: list[NicRow]) -> NicRow | None:
    """The instance's primary interface: the default NIC, else the lowest device."""
    return next((n for n in nics if n.is_default), nics[0] if nics else None)


def instance_network(vm: VmRow, nics: list[NicRow]) -> dict[str, Any]:
    """The instance's network fields: its primary address and DNS name, its subnet, and every
    interface (`networkInterfaceSet`)."""
    first = primary(nics)
    return {
        "privateDnsName": private_dns_name(vm, first) if first else "",
        "privateIpAddress": first.ip if first else None,
        "subnetId": subnet_of(first) if first else None,
        "networkInterfaceSet": [render_interface(vm, n) for n in nics],
    }


def interfaces_of(view: Any, vm_ids: list[UUID]) -> dict[UUID, list[NicRow]]:
    """Each VM's NICs (from the tenant view), by device."""
    found: dict[UUID, list[NicRow]] = view.vm_nics(vm_ids)
    return found

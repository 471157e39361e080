"""What an account may launch: DescribeInstanceTypes and DescribeAccountAttributes.

An instance type is an active service offering of the platform (its name, vCPUs and memory,
from the tenant view); every account sees the same ones. The account attributes are those a
tool asks before it launches: the platforms supported (`VPC` only: there is no EC2-Classic),
the default VPC (`none`: a network is always chosen), and `max-instances`. The account's VM
limit is kept by the ACL service and is not published to services, so `max-instances` is
`DEFAULT_MAX_INSTANCES`, the limit AWS gives a new account (the platform's own limit, when an
administrator sets one, still refuses a launch past it).
"""

from collections.abc import Callable, Iterable
from typing import Any

from services.ec2.context import Request, matches
from services.ec2.pages import page_of, paginate
from services.ec2.protocol import Ec2Error
from services.framework.tenant_rows import OfferingRow

DEFAULT_MAX_INSTANCES = 20
# AWS's attribute names this service does not serve (limits of Elastic IPs and security groups
# this platform does not have yet): asked for by name, they are left out of the answer.
_NOT_SERVED = frozenset({"max-elastic-ips", "vpc-max-elastic-ips",
                         "vpc-max-security-groups-per-interface"})


def render_instance_type(offering: OfferingRow) -> dict[str, Any]:
    """A service offering as EC2 describes an instance type."""
    cores = offering.cpu_cores or 0
    processor: dict[str, Any] = {"supportedArchitectures": ["x86_64"]}
    if offering.cpu_mhz:
        processor["sustainedClockSpeedInGhz"] = round(offering.cpu_mhz / 1000, 2)
    return {
        "instanceType": offering.name, "currentGeneration": True, "freeTierEligible": False,
        "supportedUsageClasses": ["on-demand"], "supportedRootDeviceTypes": ["ebs"],
        "supportedVirtualizationTypes": ["hvm"], "bareMetal": False, "hypervisor": "xen",
        "processorInfo": processor,
        "vCpuInfo": {"defaultVCpus": cores, "defaultCores": cores, "defaultThreadsPerCore": 1},
        "memoryInfo": {"sizeInMiB": offering.memory_mib or 0},
        "instanceStorageSupported": False,
        "ebsInfo": {"ebsOptimizedSupport": "unsupported", "encryptionSupport": "unsupported",
                    "nvmeSupport": "unsupported"},
        "networkInfo": {"ipv4AddressesPerInterface": 1, "ipv6AddressesPerInterface": 0,
                        "ipv6Supported": False, "enaSupport": "unsupported",
                        "efaSupported": False, "encryptionInTransitSupported": False},
        "placementGroupInfo": {"supportedStrategies": []},
        "hibernationSupported": False, "burstablePerformanceSupported": False,
        "dedicatedHostsSupported": False, "autoRecoverySupported": offering.ha_enabled,
        "supportedBootModes": ["legacy-bios"],
    }


def _one(key: str, *path: str) -> Callable[[dict[str, Any]], Iterable[Any]]:
    def get(item: dict[str, Any]) -> list[Any]:
        value: Any = item
        for part in (key, *path):
            value = value[part]
        if isinstance(value, bool):
            return ["true" if value else "false"]
        return list(value) if isinstance(value, list) else [value]
    return get


_TYPE_FILTERS = {
    "instance-type": _one("instanceType"),
    "current-generation": _one("currentGeneration"),
    "free-tier-eligible": _one("freeTierEligible"),
    "bare-metal": _one("bareMetal"),
    "hypervisor": _one("hypervisor"),
    "vcpu-info.default-vcpus": _one("vCpuInfo", "defaultVCpus"),
    "vcpu-info.default-cores": _one("vCpuInfo", "defaultCores"),
    "vcpu-info.default-threads-per-core": _one("vCpuInfo", "defaultThreadsPerCore"),
    "memory-info.size-in-mib": _one("memoryInfo", "sizeInMiB"),
    "processor-info.supported-architecture": _one("processorInfo", "supportedArchitectures"),
    "supported-usage-class": _one("supportedUsageClasses"),
    "supported-root-device-type": _one("supportedRootDeviceTypes"),
    "supported-virtualization-type": _one("supportedVirtualizationTypes"),
    "instance-storage-supported": _one("instanceStorageSupported"),
    "hibernation-supported": _one("hibernationSupported"),
    "auto-recovery-supported": _one("autoRecoverySupported"),
}


async def describe_instance_types(req: Request) -> dict[str, Any]:
    """DescribeInstanceTypes: the platform's service offerings (InstanceType.N, filters,
    MaxResults/NextToken)."""
    offerings = req.platform.view.offerings("service")
    wanted = req.params.members("InstanceType")
    known = {o.name for o in offerings}
    missing = [w for w in wanted if w not in known]
    if missing:
        raise Ec2Error("InvalidInstanceType", "The following supplied instance types do not "
                       f"exist: [{', '.join(m[:40] for m in missing[:20])}]")
    page = page_of("DescribeInstanceTypes", req.params)
    filters = req.params.filters()
    chosen = []
    for offering in offerings:
        item = render_instance_type(offering)
        if (not wanted or offering.name in wanted) and matches(filters, _TYPE_FILTERS, item):
            chosen.append((offering, item))
    shown, next_token = paginate(chosen, lambda r: (r[0].created_at, str(r[0].id)), page)
    return {"instanceTypeSet": [item for _, item in shown], "nextToken": next_token}


def account_attributes() -> dict[str, list[str]]:
    """The attributes this service answers, with their values."""
    return {"supported-platforms": ["VPC"], "default-vpc": ["none"],
            "max-instances": [str(DEFAULT_MAX_INSTANCES)]}


async def describe_account_attributes(req: Request) -> dict[str, Any]:
    """DescribeAccountAttributes: supported-platforms, default-vpc and max-instances (by
    AttributeName.N; none named: all)."""
    served = account_attributes()
    names = req.params.members("AttributeName")
    for name in names:
        if name not in served and name not in _NOT_SERVED:
            raise Ec2Error("InvalidParameterValue", f"Value ({name[:60]}) for parameter "
                           "attributeName is invalid. Unknown attribute name.")
    chosen = [n for n in served if not names or n in names]
    return {"accountAttributeSet": [
        {"attributeName": n, "attributeValueSet": [{"attributeValue": v} for v in served[n]]}
        for n in chosen]}

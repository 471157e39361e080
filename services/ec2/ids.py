"""EC2 ids of platform entities, and the VM states as EC2 instance states.

An id is a prefix and the platform UUID's 32 hex digits (`i-`, `vol-`, `snap-`, `ami-`), so
it maps back without a table. An id of AWS's own shape (the prefix and 8 or 17 hex digits, as
`i-0123456789abcdef0`) is well formed and names nothing here: it maps to a UUID no platform
entity has, so every lookup finds nothing and the action answers the `...NotFound` code, as
AWS does. Anything else is malformed (the `...Malformed` codes).
"""

import re
from uuid import NAMESPACE_URL, UUID, uuid5

from services.ec2.protocol import Ec2Error

INSTANCE, VOLUME, SNAPSHOT, IMAGE = "i-", "vol-", "snap-", "ami-"
VPC, SUBNET = "vpc-", "subnet-"
RESERVATION = "r-"
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_AWS_SHAPED = re.compile(r"^(?:[0-9a-f]{8}|[0-9a-f]{17})$")

# prefix -> (what it names, malformed code, not found code)
KINDS = {
    INSTANCE: ("instance", "InvalidInstanceID.Malformed", "InvalidInstanceID.NotFound"),
    VOLUME: ("volume", "InvalidVolumeID.Malformed", "InvalidVolume.NotFound"),
    SNAPSHOT: ("snapshot", "InvalidSnapshotID.Malformed", "InvalidSnapshot.NotFound"),
    IMAGE: ("image", "InvalidAMIID.Malformed", "InvalidAMIID.NotFound"),
    VPC: ("vpc", "InvalidVpcID.Malformed", "InvalidVpcID.NotFound"),
    SUBNET: ("subnet", "InvalidSubnetID.Malformed", "InvalidSubnetID.NotFound"),
}

# platform VM state -> (EC2 state code, name)
PENDING, RUNNING, SHUTTING_DOWN, TERMINATED, STOPPING, STOPPED = (
    (0, "pending"), (16, "running"), (32, "shutting-down"), (48, "terminated"),
    (64, "stopping"), (80, "stopped"))
VM_STATES = {
    "Allocated": PENDING, "Starting": PENDING, "Running": RUNNING, "Migrating": RUNNING,
    "Stopping": STOPPING, "Stopped": STOPPED, "Error": STOPPED, "Destroyed": TERMINATED,
    "Expunging": TERMINATED, "Expunged": TERMINATED,
}
# while a terminate runs, stopping and stopped are EC2's shutting-down
TERMINATING = {"Stopping": SHUTTING_DOWN, "Stopped": SHUTTING_DOWN, "Running": SHUTTING_DOWN}

# platform volume state -> EC2 volume state
VOLUME_STATES = {
    "Allocated": "creating", "Creating": "creating", "Ready": "available",
    "Attaching": "in-use", "Migrating": "in-use", "Snapshotting": "available",
    "Resizing": "available", "Destroy": "deleting", "Expunging": "deleting",
    "Expunged": "deleted",
}
SNAPSHOT_STATES = {"Allocated": "pending", "Creating": "pending",
                   "CreatedOnPrimary": "completed", "BackingUp": "completed",
                   "BackedUp": "completed", "Destroyed": "deleted", "Error": "error"}
IMAGE_STATES = {"Registered": "pending", "Downloading": "pending", "Ready": "available",
                "Error": "failed", "Removed": "deregistered"}


def to_ec2(prefix: str, entity_id: UUID | str) -> str:
    """The EC2 id of a platform id."""
    return prefix + UUID(str(entity_id)).hex


def from_ec2(prefix: str, ec2_id: str) -> UUID:
    """The platform id of an EC2 id; Ec2Error (`...Malformed`) if it is not one."""
    _what, malformed, _ = KINDS[prefix]
    text = ec2_id.strip()
    digits = text[len(prefix):] if text.startswith(prefix) else ""
    if _HEX32.match(digits):
        return UUID(hex=digits)
    if _AWS_SHAPED.match(digits):
        return foreign(text)
    raise Ec2Error(malformed, f"Invalid id: \"{ec2_id[:80]}\" (expecting \"{prefix}\" "
                   "followed by 32 hex digits, or AWS's 8 or 17)")


def foreign(ec2_id: str) -> UUID:
    """The UUID of a well-formed EC2 id of AWS's shape: a version-5 UUID of a name no id of
    ours is made from, so no platform entity has it."""
    return uuid5(NAMESPACE_URL, f"cloudkernel:ec2:aws-shaped:{ec2_id}")


def not_found(prefix: str, ec2_id: str) -> Ec2Error:
    """The error for an id that names nothing this account may see."""
    what, _, code = KINDS[prefix]
    return Ec2Error(code, f"The {what} ID '{ec2_id[:80]}' does not exist")


def reservation_of(seed: str) -> str:
    """A reservation id, stable for one RunInstances call's seed."""
    return RESERVATION + uuid5(NAMESPACE_URL, f"ec2-reservation:{seed}").hex[:17]


def instance_state(vm_state: str, terminating: bool = False) -> tuple[int, str]:
    """EC2's (code, name) for a platform VM state."""
    if terminating and vm_state in TERMINATING:
        return TERMINATING[vm_state]
    return VM_STATES.get(vm_state, PENDING)


def device_name(device_id: int | None) -> str | None:
    """A disk's device name for its slot (0: the root disk, /dev/vda)."""
    if device_id is None:
        return None
    return "/dev/vd" + "abcdefghijklmnopqrstuvwxyz"[device_id % 26]

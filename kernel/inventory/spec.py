"""The inventory file: its schema, parsing, and errors that name the line and the field."""

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from aggregates.errors import ValidationError

Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Factor = Annotated[float, msgspec.Meta(ge=1.0)]


class _Spec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of one inventory entry."""

    name: str


class ZoneSpec(_Spec, frozen=True, kw_only=True):
    """A zone: a data center."""

    network_type: Literal["Advanced", "Basic"] = "Advanced"
    dns: tuple[str, ...] = ()
    internal_dns: tuple[str, ...] = ()
    network_domain: str = ""
    guest_cidr: str = ""
    local_storage: bool = False


class PodSpec(_Spec, frozen=True, kw_only=True):
    """A pod: a rack or row inside a zone, with its management network."""

    zone: str
    gateway: str
    cidr: str
    start_ip: str
    end_ip: str


class ClusterSpec(_Spec, frozen=True, kw_only=True):
    """A cluster of same-hypervisor hosts inside a pod."""

    pod: str
    hypervisor: Literal["KVM"] = "KVM"
    cpu_overprovisioning: Factor = 1.0
    memory_overprovisioning: Factor = 1.0


class HostSpec(_Spec, frozen=True, kw_only=True):
    """A hypervisor host, reached through its libvirt URI."""

    cluster: str
    uri: str
    cpu_cores: Positive
    cpu_mhz: Positive
    memory_mib: Positive
    tags: tuple[str, ...] = ()


class StoragePoolSpec(_Spec, frozen=True, kw_only=True):
    """A primary storage pool, cluster-wide (`cluster`) or zone-wide (`zone`)."""

    cluster: str = ""
    zone: str = ""
    uri: str
    pool_name: str = ""
    capacity_gib: Positive
    overprovisioning: Factor = 2.0
    tags: tuple[str, ...] = ()


class ImageStoreSpec(_Spec, frozen=True, kw_only=True):
    """Secondary storage for templates, ISOs and snapshots."""

    zone: str
    url: str
    protocol: Literal["nfs", "s3", "swift", "smb"] = "nfs"


class TemplateSpec(_Spec, frozen=True, kw_only=True):
    """A VM image registered for download into a zone."""

    zone: str
    url: str
    format: Literal["QCOW2", "RAW", "ISO"] = "QCOW2"
    checksum: str = ""
    os_type: str = "Other Linux"


class ServiceOfferingSpec(_Spec, frozen=True, kw_only=True):
    """A compute size users deploy VMs with."""

    cpu_cores: Positive
    cpu_mhz: Positive
    memory_mib: Positive
    host_tags: tuple[str, ...] = ()
    storage_tags: tuple[str, ...] = ()
    ha: bool = False


class DiskOfferingSpec(_Spec, frozen=True, kw_only=True):
    """A data disk size users attach."""

    size_gib: NonNegative = 0
    customizable: bool = False
    tags: tuple[str, ...] = ()


class PublicRangeSpec(_Spec, frozen=True, kw_only=True):
    """A range of a zone's public addresses: `first`..`last` inside `cidr`, via `gateway`."""

    zone: str
    cidr: str
    gateway: str
    first: str
    last: str


class InventoryFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole inventory file; every section is an array of tables."""

    zones: tuple[ZoneSpec, ...] = ()
    pods: tuple[PodSpec, ...] = ()
    clusters: tuple[ClusterSpec, ...] = ()
    hosts: tuple[HostSpec, ...] = ()
    storage_pools: tuple[StoragePoolSpec, ...] = ()
    image_stores: tuple[ImageStoreSpec, ...] = ()
    templates: tuple[TemplateSpec, ...] = ()
    service_offerings: tuple[ServiceOfferingSpec, ...] = ()
    disk_offerings: tuple[DiskOfferingSpec, ...] = ()
    public_ranges: tuple[PublicRangeSpec, ...] = ()


class InventoryError(ValidationError):
    """An inventory file is malformed; the message names the file, line and field."""

    code = "inventory"


@dataclass(frozen=True)
class Located:
    """Maps a section/index/field of the file to its line number."""

    path: str
    lines: dict[tuple[str, int, str], int]

    def line_of(self, section: str, index: int, field: str = "") -> int | None:
        """The line of a field, or of its table's header when the field is absent."""
        return self.lines.get((section, index, field)) or self.lines.get((section, index, ""))

    def error(self, section: str, index: int, field: str, message: str) -> InventoryError:
        """An error that names the file, line, entry and field."""
        line = self.line_of(section, index, field)
        where = f"{self.path}:{line}" if line else self.path
        target = f"{section}[{index}]" + (f".{field}" if field else "")
        return InventoryError(f"{where}: {target}: {message}")


_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_]+)\s*\]\]\s*(#.*)?$")
_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.]+)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_PATH = re.compile(r"`\$\.([a-z_]+)\[(\d+)\](?:\.([a-z_]+))?")
_HERE = "${here}"


def _locate(path: str, text: str) -> Located:
    lines: dict[tuple[str, int, str], int] = {}
    counts: dict[str, int] = {}
    current: tuple[str, int] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if m := _HEADER.match(line):
            section = m.group(1)
            index = counts.get(section, 0)
            counts[section] = index + 1
            current = (section, index)
            lines[(section, index, "")] = number
        elif _TABLE.match(line):
            current = None
        elif current and (m := _KEY.match(line)):
            lines.setdefault((*current, m.group(1)), number)
    return Located(path, lines)


def parse_inventory(path: Path) -> tuple[InventoryFile, Located]:
    """Read and validate a file; refer to its directory as `${here}` inside values."""
    try:
        text = path.read_text()
    except OSError as e:
        raise InventoryError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_inventory_text(text, str(path), here=path.resolve().parent)


def parse_inventory_text(
    text: str, name: str, here: Path | None = None
) -> tuple[InventoryFile, Located]:
    """Validate inventory TOML text; errors name the line and field."""
    located = _locate(name, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(f"{name}: not valid TOML: {e}") from None
    unknown = sorted(set(raw) - set(InventoryFile.__struct_fields__))
    if unknown:
        known = ", ".join(InventoryFile.__struct_fields__)
        raise InventoryError(f"{name}: unknown section {unknown[0]!r}; sections are: {known}")
    for section, value in raw.items():
        if not isinstance(value, list):
            raise InventoryError(
                f"{name}: section {section!r} must be an array of tables ([[{section}]])")
    data = _expand(raw, str(here)) if here is not None else raw
    try:
        inventory = msgspec.convert(data, InventoryFile)
    except msgspec.ValidationError as e:
        message = str(e)
        if m := _PATH.search(message):
            section, index, field = m.group(1), int(m.group(2)), m.group(3) or ""
            detail = message.split(" - at ")[0]
            if "missing required field" in detail or "unknown field" in detail:
                field = detail.rsplit("`", 2)[-2]
            raise located.error(section, index, field, detail) from None
        raise InventoryError(f"{name}: {message}") from None
    _check_names(inventory, located)
    return inventory, located


def sections(inventory: InventoryFile) -> Iterator[tuple[str, int, _Spec]]:
    """Every entry with its section and index, in dependency order."""
    for section in InventoryFile.__struct_fields__:
        for index, spec in enumerate(getattr(inventory, section)):
            yield section, index, spec


def _check_names(inventory: InventoryFile, located: Located) -> None:
    for section in InventoryFile.__struct_fields__:
        seen: dict[str, int] = {}
        for index, spec in enumerate(getattr(inventory, section)):
            if not spec.name.strip():
                raise located.error(section, index, "name", "must not be empty")
            if spec.name in seen:
                earlier = f"{section}[{seen[spec.name]}]"
                raise located.error(section, index, "name",
                                    f"{spec.name!r} is already used by {earlier}")
            seen[spec.name] = index


def _expand(value: object, here: str) -> object:
    if isinstance(value, str):
        return value.replace(_HERE, here)
    if isinstance(value, list):
        return [_expand(v, here) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, here) for k, v in value.items()}
    return value

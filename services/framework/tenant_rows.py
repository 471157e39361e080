"""The tables and rows of `services.framework.tenant_view.TenantView`: what it keeps and what its
queries answer."""

import json
import sqlite3
from dataclasses import dataclass
from typing import Any
from uuid import UUID

FINISHED = ("Succeeded", "Failed", "Compensated", "Cancelled")

# The schema's version, kept in the file (`PRAGMA user_version`). A file of another version is
# emptied and made anew when opened (`TenantView`): it gets a new view id, hence a new durable
# consumer, which rebuilds it from the first event. Raise it whenever the tables change or the
# view starts following events it did not follow before (a file made before would lack them).
# 1: the first view (no version kept); 2: NICs (`nic.*`, `vm.NicPlugged`/`NicUnplugged`) and
# the service offerings' `ha_enabled`; 3: networks (`network.*`) and the zones' guest CIDR.
SCHEMA_VERSION = 3

# The view's tables: one row per entity, with the log position of its last event.
SCHEMA = """
CREATE TABLE IF NOT EXISTS view_position (id INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL, view_id TEXT NOT NULL);
INSERT OR IGNORE INTO view_position (id, position, view_id)
    VALUES (1, 0, lower(hex(randomblob(8))));
CREATE TABLE IF NOT EXISTS vms (id TEXT PRIMARY KEY, name TEXT, account TEXT, state TEXT,
    host_id TEXT, destination_host_id TEXT, zone_id TEXT, template_id TEXT, offering_id TEXT,
    root_volume_id TEXT,
    last_error TEXT DEFAULT '', created_at TEXT, updated_at TEXT, position INTEGER);
CREATE INDEX IF NOT EXISTS vms_account ON vms (account);
CREATE TABLE IF NOT EXISTS volumes (id TEXT PRIMARY KEY, name TEXT, account TEXT, state TEXT,
    volume_type TEXT, size_bytes INTEGER, requested_size_bytes INTEGER, vm_id TEXT,
    device_id INTEGER, pool_id TEXT, zone_id TEXT, template_id TEXT, disk_offering_id TEXT,
    attached_at TEXT, last_error TEXT DEFAULT '', created_at TEXT, updated_at TEXT,
    position INTEGER);
CREATE INDEX IF NOT EXISTS volumes_account ON volumes (account);
CREATE TABLE IF NOT EXISTS snapshots (id TEXT PRIMARY KEY, name TEXT, account TEXT,
    volume_id TEXT, zone_id TEXT, state TEXT, volume_size_bytes INTEGER, size_bytes INTEGER,
    created_at TEXT, updated_at TEXT, position INTEGER);
CREATE INDEX IF NOT EXISTS snapshots_account ON snapshots (account);
CREATE TABLE IF NOT EXISTS templates (id TEXT PRIMARY KEY, name TEXT, zone_id TEXT,
    state TEXT, format TEXT, os_type TEXT, size_bytes INTEGER, created_at TEXT,
    updated_at TEXT, position INTEGER);
CREATE TABLE IF NOT EXISTS offerings (id TEXT PRIMARY KEY, kind TEXT, name TEXT,
    cpu_cores INTEGER, cpu_mhz INTEGER, memory_mib INTEGER, size_bytes INTEGER,
    ha_enabled INTEGER, active INTEGER, created_at TEXT, position INTEGER);
CREATE TABLE IF NOT EXISTS zones (id TEXT PRIMARY KEY, name TEXT, network_type TEXT,
    allocation_state TEXT, guest_cidr TEXT, created_at TEXT, position INTEGER);
CREATE TABLE IF NOT EXISTS networks (id TEXT PRIMARY KEY, name TEXT, zone_id TEXT,
    network_type TEXT, cidr TEXT, gateway TEXT, reserved_ranges TEXT, state TEXT,
    allocated_ips INTEGER NOT NULL DEFAULT 0, last_error TEXT DEFAULT '', created_at TEXT,
    updated_at TEXT, position INTEGER);
CREATE TABLE IF NOT EXISTS nics (id TEXT PRIMARY KEY, vm_id TEXT, network_id TEXT,
    mac TEXT, device_id INTEGER, is_default INTEGER, ip TEXT, state TEXT, plugged INTEGER,
    created_at TEXT, position INTEGER);
CREATE INDEX IF NOT EXISTS nics_vm ON nics (vm_id);
CREATE TABLE IF NOT EXISTS operations (id TEXT PRIMARY KEY, kind TEXT, status TEXT,
    entity_ids TEXT, error_code TEXT, message TEXT, accepted_at TEXT, finished_at TEXT,
    position INTEGER);
"""


@dataclass(frozen=True)
class VmRow:
    """A VM as the view has it."""

    id: UUID
    name: str
    account: str
    state: str
    host_id: str | None
    zone_id: str
    template_id: str
    offering_id: str
    root_volume_id: str | None
    last_error: str
    created_at: str
    updated_at: str
    position: int


@dataclass(frozen=True)
class VolumeRow:
    """A volume as the view has it (`vm_id`/`device_id` while attached)."""

    id: UUID
    name: str
    account: str
    state: str
    volume_type: str
    size_bytes: int
    requested_size_bytes: int | None
    vm_id: str | None
    device_id: int | None
    pool_id: str | None
    zone_id: str
    template_id: str | None
    disk_offering_id: str | None
    attached_at: str | None
    last_error: str
    created_at: str
    updated_at: str
    position: int


@dataclass(frozen=True)
class SnapshotRow:
    """A volume snapshot as the view has it."""

    id: UUID
    name: str
    account: str
    volume_id: str
    zone_id: str
    state: str
    volume_size_bytes: int
    size_bytes: int | None
    created_at: str
    updated_at: str
    position: int


@dataclass(frozen=True)
class TemplateRow:
    """A template (every account may use a Ready one)."""

    id: UUID
    name: str
    zone_id: str
    state: str
    format: str
    os_type: str
    size_bytes: int | None
    created_at: str
    updated_at: str
    position: int


@dataclass(frozen=True)
class OfferingRow:
    """A service offering (`kind` "service") or disk offering (`kind` "disk")."""

    id: UUID
    kind: str
    name: str
    cpu_cores: int | None
    cpu_mhz: int | None
    memory_mib: int | None
    size_bytes: int | None
    ha_enabled: bool
    active: bool
    created_at: str
    position: int


@dataclass(frozen=True)
class ZoneRow:
    """A zone."""

    id: UUID
    name: str
    network_type: str
    allocation_state: str
    guest_cidr: str | None
    created_at: str
    position: int


@dataclass(frozen=True)
class NetworkRow:
    """A guest network of a zone (networks belong to no account: any tenant may deploy on an
    Implemented one): its CIDR, gateway, reserved ranges and how many addresses it handed
    out."""

    id: UUID
    name: str
    zone_id: str
    network_type: str
    cidr: str
    gateway: str
    reserved_ranges: tuple[tuple[str, str], ...]
    state: str
    allocated_ips: int
    last_error: str
    created_at: str
    updated_at: str
    position: int


@dataclass(frozen=True)
class NicRow:
    """A VM's network interface on one network: its MAC, its device slot, and its address
    while it holds one (`ip` None once released)."""

    id: UUID
    vm_id: str
    network_id: str | None
    mac: str | None
    device_id: int | None
    is_default: bool
    ip: str | None
    state: str | None
    created_at: str | None
    position: int


@dataclass(frozen=True)
class OperationRow:
    """An operation's kind, entities and outcome (`status` Running until it finished)."""

    id: UUID
    kind: str
    status: str
    entity_ids: tuple[str, ...]
    error_code: str | None
    message: str | None
    accepted_at: str
    finished_at: str | None
    position: int

    @property
    def finished(self) -> bool:
        """Whether the operation ended."""
        return self.status in FINISHED


def row(row_type: Any, found: sqlite3.Row) -> Any:
    """A row type from a database row."""
    values = {k: found[k] for k in found.keys()  # noqa: SIM118
              if k in row_type.__dataclass_fields__}
    values["id"] = UUID(values["id"])
    if "entity_ids" in values:
        values["entity_ids"] = tuple(json.loads(values["entity_ids"] or "[]"))
    if "reserved_ranges" in values:
        values["reserved_ranges"] = tuple((str(a), str(b)) for a, b in
                                          json.loads(values["reserved_ranges"] or "[]"))
    for flag in ("active", "is_default", "ha_enabled"):
        if flag in values:
            values[flag] = bool(values[flag])
    for text in ("last_error",):
        if text in values and values[text] is None:
            values[text] = ""
    return row_type(**values)

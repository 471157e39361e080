"""TenantView: a service's own SQLite read model of the platform's public events.

A service feeds it from a durable consumer (`ServiceRuntime.consume(..., view.subjects(),
view.apply)`) and reads it per account: VMs, volumes, snapshots (each with its owning account),
and the shared templates, offerings and zones, plus the operations' outcomes. Each event is
applied in one transaction that also stores its log position, so a redelivered event (a
position at or below the stored one) changes nothing: the view is exactly-once over an
at-least-once stream. It never reads the platform's database: only the events' payloads
(the public contract in `docs/contracts/events`). The VMs' NICs (MAC, device, address) come
from the `nic.*` events and the VM's `NicPlugged`/`NicUnplugged`; the zones' guest networks
(which belong to no account) from the `network.*` events.

The file keeps its schema version (`tenant_rows.SCHEMA_VERSION`); a file of another version
(one made before the view followed some events) is emptied when opened, under a new view id,
so its service's next durable consumer rebuilds it from the first event.
"""

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from services.framework.tenant_rows import (
    SCHEMA,
    SCHEMA_VERSION,
    NetworkRow,
    NicRow,
    OfferingRow,
    OperationRow,
    SnapshotRow,
    TemplateRow,
    VmRow,
    VolumeRow,
    ZoneRow,
    row,
)

EVENTS_PREFIX = "cloudkernel.events."
OPERATION_TOPICS = ("operation.Accepted", "operation.Succeeded", "operation.Failed",
                    "operation.RolledBack", "operation.Cancelled")
ENTITY_AGGREGATES = ("vm", "volume", "snapshot", "template", "service_offering",
                     "disk_offering", "zone", "nic", "network")


class ViewEvent(Protocol):
    """What the view needs of an event (`services.framework.framework.ServiceEvent` has it)."""

    @property
    def position(self) -> int: ...

    @property
    def topic(self) -> str: ...

    @property
    def originator_id(self) -> UUID: ...

    def data(self) -> dict[str, Any]: ...


_VM_STATES = {"StartRequested": "Starting", "Started": "Running", "StartFailed": "Stopped",
              "StopRequested": "Stopping", "Stopped": "Stopped", "StopFailed": "Running",
              "StoppedOutOfBand": "Stopped", "AdoptedRunning": "Running",
              "MigrationRequested": "Migrating", "Migrated": "Running",
              "MigrationFailed": "Running", "Destroyed": "Destroyed", "Recovered": "Stopped",
              "ExpungeRequested": "Expunging", "Expunged": "Expunged", "Failed": "Error"}
_VOLUME_STATES = {"CreationRequested": "Creating", "CreationCompleted": "Ready",
                  "CreationFailed": "Allocated", "AttachRequested": "Attaching",
                  "Attached": "Ready", "AttachFailed": "Ready", "ResizeRequested": "Resizing",
                  "Resized": "Ready", "ResizeFailed": "Ready", "MigrationRequested": "Migrating",
                  "Migrated": "Ready", "MigrationFailed": "Ready",
                  "SnapshotRequested": "Snapshotting", "SnapshotTaken": "Ready",
                  "SnapshotFailed": "Ready", "Destroyed": "Destroy", "ExpungeRequested":
                  "Expunging", "Expunged": "Expunged", "ExpungeFailed": "Destroy"}
_SNAPSHOT_STATES = {"CreationRequested": "Creating", "CreatedOnPrimary": "CreatedOnPrimary",
                    "BackupRequested": "BackingUp", "BackedUp": "BackedUp",
                    "Destroyed": "Destroyed", "Failed": "Error"}
_TEMPLATE_STATES = {"DownloadStarted": "Downloading", "Downloaded": "Ready",
                    "DownloadFailed": "Error", "Removed": "Removed"}
_NETWORK_STATES = {"ImplementationStarted": "Implementing", "Implemented": "Implemented",
                   "ImplementationFailed": "Allocated", "ShutDown": "Shutdown",
                   "Destroyed": "Destroyed"}
_OPERATION_STATUS = {"Succeeded": "Succeeded", "Failed": "Failed",
                     "RolledBack": "Compensated", "Cancelled": "Cancelled"}


class TenantView:
    """The read model in one SQLite file (WAL); `apply` an event, query per account."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        """Make the tables; a file of another schema version is emptied first (and gets a new
        view id, so it is rebuilt from the first event rather than resumed)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version != SCHEMA_VERSION:
                tables = [r[0] for r in self._db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'")]
                for table in tables:
                    self._db.execute(f'DROP TABLE "{table}"')
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.executescript(SCHEMA)  # commits: each statement is IF NOT EXISTS / IGNORE
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @staticmethod
    def subjects() -> tuple[str, ...]:
        """The event subjects the view is built from."""
        return (*(f"{EVENTS_PREFIX}{a}.>" for a in ENTITY_AGGREGATES),
                *(EVENTS_PREFIX + t for t in OPERATION_TOPICS))

    @property
    def view_id(self) -> str:
        """A random id given to this view's file when it was made."""
        with self._lock:
            return str(self._db.execute("SELECT view_id FROM view_position").fetchone()[0])

    def durable(self, prefix: str) -> str:
        """A durable consumer name for this view's file: a new (empty) file gets a new
        consumer, which starts from the first event, so a lost file is rebuilt whole rather
        than resumed from where the old one stopped."""
        return f"{prefix}-{self.view_id}"

    @property
    def position(self) -> int:
        """The log position of the last event applied (0: none yet)."""
        with self._lock:
            return int(self._db.execute("SELECT position FROM view_position").fetchone()[0])

    # ------------------------------------------------------------------ writing

    def apply(self, event: ViewEvent) -> None:
        """Apply one event, once: an event at or below the stored position is ignored."""
        aggregate, _, name = event.topic.partition(".")
        handler = _HANDLERS.get(aggregate)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if event.position <= self._stored_position():
                    self._db.execute("ROLLBACK")
                    return
                if handler is not None:
                    handler(self, name, str(event.originator_id), event.data(), event.position)
                self._db.execute("UPDATE view_position SET position = ?", (event.position,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _stored_position(self) -> int:
        return int(self._db.execute("SELECT position FROM view_position").fetchone()[0])

    def _insert(self, table: str, row: Mapping[str, Any]) -> None:
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self._db.execute(f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})",
                         tuple(row.values()))

    def _update(self, table: str, entity_id: str, changes: Mapping[str, Any]) -> None:
        sets = ", ".join(f"{k} = ?" for k in changes)
        self._db.execute(f"UPDATE {table} SET {sets} WHERE id = ?",
                         (*changes.values(), entity_id))

    def _vm(self, name: str, vm_id: str, d: dict[str, Any], pos: int) -> None:
        at = d.get("timestamp", "")
        if name == "Allocated":
            self._insert("vms", {"id": vm_id, "name": d["name"], "account": d["account"],
                                 "state": "Allocated", "zone_id": d["zone_id"],
                                 "template_id": d["template_id"],
                                 "offering_id": d["service_offering_id"], "created_at": at,
                                 "updated_at": at, "position": pos})
            return
        changes: dict[str, Any] = {"updated_at": at, "position": pos}
        if name in _VM_STATES:
            changes["state"] = _VM_STATES[name]
        if name in ("StartRequested", "AdoptedRunning"):
            changes["host_id"] = d["host_id"]
        elif name == "MigrationRequested":
            changes["destination_host_id"] = d["destination_host_id"]
        elif name == "Migrated":
            self._db.execute("UPDATE vms SET host_id = COALESCE(destination_host_id, host_id) "
                             "WHERE id = ?", (vm_id,))
            changes["destination_host_id"] = None
        elif name in ("MigrationFailed", "Failed"):
            changes["destination_host_id"] = None
        elif name in ("Stopped", "StoppedOutOfBand", "StartFailed", "Destroyed",
                      "ExpungeRequested"):
            changes["host_id"] = None
        elif name == "Repaired":
            changes.update(state=d["to_state"], destination_host_id=None)
            if d["to_state"] == "Stopped":
                changes["host_id"] = None
        elif name == "DiskAttached" and d["device_id"] == 0:
            changes["root_volume_id"] = d["volume_id"]
        elif name in ("NicPlugged", "NicUnplugged"):
            self._plugged(vm_id, d, name == "NicPlugged", pos)
        if name in ("Failed", "StartFailed", "StopFailed", "MigrationFailed"):
            changes["last_error"] = d.get("reason", "")
        elif name in ("Started", "Stopped", "Migrated"):
            changes["last_error"] = ""
        self._update("vms", vm_id, changes)

    def _volume(self, name: str, volume_id: str, d: dict[str, Any], pos: int) -> None:
        at = d.get("timestamp", "")
        if name == "Allocated":
            self._insert("volumes", {
                "id": volume_id, "name": d["name"], "account": d["account"],
                "state": "Allocated", "volume_type": d["volume_type"],
                "size_bytes": d["size_bytes"], "zone_id": d["zone_id"],
                "template_id": d.get("template_id"),
                "disk_offering_id": d.get("disk_offering_id"), "created_at": at,
                "updated_at": at, "position": pos})
            return
        changes: dict[str, Any] = {"updated_at": at, "position": pos}
        if name in _VOLUME_STATES:
            changes["state"] = _VOLUME_STATES[name]
        if name == "CreationRequested":
            changes["pool_id"] = d["pool_id"]
        elif name == "CreationFailed":
            changes["pool_id"] = None
        elif name == "AttachRequested":
            changes.update(vm_id=d["vm_id"], device_id=d["device_id"], attached_at=at)
        elif name in ("AttachFailed", "Detached"):
            changes.update(vm_id=None, device_id=None, attached_at=None)
        elif name == "ResizeRequested":
            changes["requested_size_bytes"] = d["size_bytes"]
        elif name == "Resized":
            self._db.execute("UPDATE volumes SET size_bytes = COALESCE(requested_size_bytes, "
                             "size_bytes) WHERE id = ?", (volume_id,))
            changes["requested_size_bytes"] = None
        elif name == "ResizeFailed":
            changes["requested_size_bytes"] = None
        elif name == "Repaired":
            changes["state"] = d["to_state"]
            if d.get("detached"):
                changes.update(vm_id=None, device_id=None, attached_at=None)
        if "reason" in d:
            changes["last_error"] = d["reason"]
        self._update("volumes", volume_id, changes)

    def _snapshot(self, name: str, snapshot_id: str, d: dict[str, Any], pos: int) -> None:
        at = d.get("timestamp", "")
        if name == "Allocated":
            self._insert("snapshots", {
                "id": snapshot_id, "name": d["name"], "account": d["account"],
                "volume_id": d["volume_id"], "zone_id": d["zone_id"], "state": "Allocated",
                "volume_size_bytes": d["volume_size_bytes"], "created_at": at,
                "updated_at": at, "position": pos})
            return
        changes: dict[str, Any] = {"updated_at": at, "position": pos}
        if name in _SNAPSHOT_STATES:
            changes["state"] = _SNAPSHOT_STATES[name]
        if name == "BackedUp":
            changes["size_bytes"] = d["size_bytes"]
        self._update("snapshots", snapshot_id, changes)

    def _template(self, name: str, template_id: str, d: dict[str, Any], pos: int) -> None:
        at = d.get("timestamp", "")
        if name == "Registered":
            self._insert("templates", {
                "id": template_id, "name": d["name"], "zone_id": d["zone_id"],
                "state": "Registered", "format": d["format"], "os_type": d["os_type"],
                "created_at": at, "updated_at": at, "position": pos})
            return
        changes: dict[str, Any] = {"updated_at": at, "position": pos}
        if name in _TEMPLATE_STATES:
            changes["state"] = _TEMPLATE_STATES[name]
        if name == "Downloaded":
            changes["size_bytes"] = d["size_bytes"]
        self._update("templates", template_id, changes)

    def _nic(self, name: str, nic_id: str, d: dict[str, Any], pos: int) -> None:
        if name == "Allocated":  # the VM's NicPlugged may have come first (same save)
            self._db.execute(
                "INSERT INTO nics (id, vm_id, network_id, mac, device_id, is_default, state, "
                "created_at, position) VALUES (?, ?, ?, ?, ?, ?, 'Allocated', ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET vm_id = excluded.vm_id, network_id = "
                "excluded.network_id, mac = excluded.mac, device_id = excluded.device_id, "
                "is_default = excluded.is_default, state = COALESCE(nics.state, "
                "excluded.state), created_at = excluded.created_at, position = "
                "excluded.position",
                (nic_id, d["vm_id"], d["network_id"], d["mac"], d["device_id"],
                 int(bool(d["is_default"])), d.get("timestamp", ""), pos))
        elif name == "Reserved":
            self._update("nics", nic_id, {"ip": d["ip"], "state": "Reserved", "position": pos})
        elif name == "Released":
            self._update("nics", nic_id, {"ip": None, "state": "Released", "position": pos})

    def _plugged(self, vm_id: str, d: dict[str, Any], plugged: bool, pos: int) -> None:
        self._db.execute(
            "INSERT INTO nics (id, vm_id, device_id, plugged, position) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET plugged = excluded.plugged, position = "
            "MAX(nics.position, excluded.position)",
            (str(d["nic_id"]), vm_id, d.get("device_id"), int(plugged), pos))

    def _zone(self, name: str, zone_id: str, d: dict[str, Any], pos: int) -> None:
        if name == "Created":
            self._insert("zones", {"id": zone_id, "name": d["name"],
                                   "network_type": d["network_type"],
                                   "allocation_state": "Enabled",
                                   "guest_cidr": d.get("guest_cidr"),
                                   "created_at": d.get("timestamp", ""), "position": pos})
        elif name == "AllocationStateChanged":
            self._update("zones", zone_id, {"allocation_state": d["state"], "position": pos})

    def _network(self, name: str, network_id: str, d: dict[str, Any], pos: int) -> None:
        at = d.get("timestamp", "")
        if name == "Created":
            self._insert("networks", {
                "id": network_id, "name": d["name"], "zone_id": d["zone_id"],
                "network_type": d["network_type"], "cidr": d["cidr"], "gateway": d["gateway"],
                "reserved_ranges": json.dumps(d.get("reserved_ranges", [])),
                "state": "Allocated", "allocated_ips": 0, "created_at": at, "updated_at": at,
                "position": pos})
            return
        changes: dict[str, Any] = {"updated_at": at, "position": pos}
        if name in _NETWORK_STATES:
            changes["state"] = _NETWORK_STATES[name]
        if name == "ImplementationFailed":
            changes["last_error"] = d.get("reason", "")
        elif name == "Implemented":
            changes["last_error"] = ""
        elif name in ("IpAllocated", "IpReleased"):
            step = 1 if name == "IpAllocated" else -1
            self._db.execute("UPDATE networks SET allocated_ips = MAX(0, allocated_ips + ?) "
                             "WHERE id = ?", (step, network_id))
        self._update("networks", network_id, changes)

    def _operation(self, name: str, operation_id: str, d: dict[str, Any], pos: int) -> None:
        if name == "Accepted":
            self._insert("operations", {
                "id": operation_id, "kind": d["kind"], "status": "Running",
                "entity_ids": json.dumps(d.get("entity_ids", [])),
                "accepted_at": d.get("at", d.get("timestamp", "")), "position": pos})
        elif name in _OPERATION_STATUS:
            self._update("operations", operation_id, {
                "status": _OPERATION_STATUS[name], "error_code": d.get("error_code"),
                "message": d.get("message"), "finished_at": d.get("at", ""),
                "position": pos})

    # ------------------------------------------------------------------ reading

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def _select(self, table: str, row_type: Any, *, account: str | None,
                ids: Iterable[UUID] | None, where: str = "") -> list[Any]:
        clauses, args = ([where] if where else []), []
        if account is not None:
            clauses.append("account = ?")
            args.append(account)
        if ids is not None:
            wanted = [str(i) for i in ids]
            if not wanted:
                return []
            clauses.append(f"id IN ({', '.join('?' for _ in wanted)})")
            args.extend(wanted)
        sql = f"SELECT * FROM {table}" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
        return [row(row_type, r) for r in self._rows(sql + " ORDER BY position, id", args)]

    def vms(self, account: str | None, ids: Iterable[UUID] | None = None, *,
            include_expunged: bool = False) -> list[VmRow]:
        """The account's VMs (None: every account's), oldest first."""
        where = "" if include_expunged else "state != 'Expunged'"
        return sorted(self._select("vms", VmRow, account=account, ids=ids, where=where),
                      key=lambda v: (v.created_at, str(v.id)))

    def vm(self, vm_id: UUID, account: str | None) -> VmRow | None:
        """One VM of the account (None: not found, or another account's)."""
        found = self.vms(account, [vm_id], include_expunged=True)
        return found[0] if found else None

    def volumes(self, account: str | None, ids: Iterable[UUID] | None = None, *,
                include_expunged: bool = False) -> list[VolumeRow]:
        """The account's volumes (None: every account's), oldest first."""
        where = "" if include_expunged else "state != 'Expunged'"
        return sorted(self._select("volumes", VolumeRow, account=account, ids=ids, where=where),
                      key=lambda v: (v.created_at, str(v.id)))

    def volume(self, volume_id: UUID, account: str | None) -> VolumeRow | None:
        """One volume of the account (None: not found, or another account's)."""
        found = self.volumes(account, [volume_id], include_expunged=True)
        return found[0] if found else None

    def vm_volumes(self, vm_id: UUID) -> list[VolumeRow]:
        """The volumes attached to a VM, by device."""
        rows = self._rows("SELECT * FROM volumes WHERE vm_id = ? ORDER BY device_id",
                          (str(vm_id),))
        return [row(VolumeRow, r) for r in rows]

    def snapshots(self, account: str | None,
                  ids: Iterable[UUID] | None = None) -> list[SnapshotRow]:
        """The account's snapshots (None: every account's), oldest first."""
        return self._select("snapshots", SnapshotRow, account=account, ids=ids)

    def snapshot(self, snapshot_id: UUID, account: str | None) -> SnapshotRow | None:
        """One snapshot of the account."""
        found = self.snapshots(account, [snapshot_id])
        return found[0] if found else None

    def templates(self, ids: Iterable[UUID] | None = None) -> list[TemplateRow]:
        """Every template not removed."""
        return self._select("templates", TemplateRow, account=None, ids=ids,
                            where="state != 'Removed'")

    def template(self, template_id: UUID) -> TemplateRow | None:
        """One template."""
        found = self.templates([template_id])
        return found[0] if found else None

    def offerings(self, kind: str = "service") -> list[OfferingRow]:
        """The active offerings of a kind ("service" or "disk")."""
        rows = self._rows("SELECT * FROM offerings WHERE kind = ? AND active = 1 "
                          "ORDER BY position", (kind,))
        return [row(OfferingRow, r) for r in rows]

    def offering(self, offering_id: UUID) -> OfferingRow | None:
        """One offering, retired or not."""
        rows = self._rows("SELECT * FROM offerings WHERE id = ?", (str(offering_id),))
        return row(OfferingRow, rows[0]) if rows else None

    def zones(self) -> list[ZoneRow]:
        """Every zone, oldest first."""
        return [row(ZoneRow, r) for r in self._rows("SELECT * FROM zones ORDER BY position")]

    def networks(self, ids: Iterable[UUID] | None = None, *,
                 include_destroyed: bool = False) -> list[NetworkRow]:
        """The zones' guest networks (not destroyed, unless asked), oldest first."""
        where = "" if include_destroyed else "state != 'Destroyed'"
        return self._select("networks", NetworkRow, account=None, ids=ids, where=where)

    def network(self, network_id: UUID) -> NetworkRow | None:
        """One network, destroyed or not."""
        found = self.networks([network_id], include_destroyed=True)
        return found[0] if found else None

    def vm_nics(self, vm_ids: Iterable[UUID]) -> dict[UUID, list[NicRow]]:
        """The NICs plugged into each of these VMs (those not released), by device; a VM
        without one is absent."""
        wanted = [str(i) for i in vm_ids]
        out: dict[UUID, list[NicRow]] = {}
        for start in range(0, len(wanted), 500):  # SQLite's bound parameters are limited
            chunk = wanted[start:start + 500]
            rows = self._rows(
                "SELECT * FROM nics WHERE vm_id IN (" + ", ".join("?" for _ in chunk) + ") "
                "AND COALESCE(plugged, 1) = 1 AND mac IS NOT NULL "
                "AND state != 'Released' ORDER BY device_id, id", chunk)
            for r in rows:
                nic: NicRow = row(NicRow, r)
                out.setdefault(UUID(nic.vm_id), []).append(nic)
        return out

    def operation(self, operation_id: UUID) -> OperationRow | None:
        """An operation's outcome so far (None: not seen yet)."""
        rows = self._rows("SELECT * FROM operations WHERE id = ?", (str(operation_id),))
        return row(OperationRow, rows[0]) if rows else None


def _offering(kind: str) -> Callable[[TenantView, str, str, dict[str, Any], int], None]:
    def apply(view: TenantView, name: str, offering_id: str, d: dict[str, Any],
              pos: int) -> None:
        if name == "Created":
            view._insert("offerings", {
                "id": offering_id, "kind": kind, "name": d["name"],
                "cpu_cores": d.get("cpu_cores"), "cpu_mhz": d.get("cpu_mhz"),
                "memory_mib": d.get("memory_mib"), "size_bytes": d.get("size_bytes"),
                "ha_enabled": int(bool(d.get("ha_enabled"))), "active": 1,
                "created_at": d.get("timestamp", ""), "position": pos})
        elif name == "Retired":
            view._update("offerings", offering_id, {"active": 0, "position": pos})
    return apply


_HANDLERS: dict[str, Callable[[TenantView, str, str, dict[str, Any], int], None]] = {
    "vm": TenantView._vm, "volume": TenantView._volume, "snapshot": TenantView._snapshot,
    "template": TenantView._template, "zone": TenantView._zone, "nic": TenantView._nic,
    "network": TenantView._network,
    "operation": TenantView._operation,
    "service_offering": _offering("service"), "disk_offering": _offering("disk"),
}

"""Moving a domain between hosts: libvirt migration first, a redefine-and-restart fallback.

The first path is `migrateToURI3(target, flags=PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE, plus
LIVE for a running domain or OFFLINE for a stopped one)`, which qemu/KVM hosts perform.

Where the source host cannot migrate, the fallback is what an operator would do by hand:
define the same (inactive, secure) XML on the target with the target's domain type, start it
there if it ran on the source, then power off and undefine it on the source. libvirt's test
driver takes this path. It answers VIR_ERR_NO_SUPPORT for `migrate`/`migrate3`, but for
`migrateToURI3` the public API's own feature check answers VIR_ERR_ARGUMENT_UNSUPPORTED ("p2p
migration is not supported by the source host") before the driver is called; that is libvirt
saying "this driver cannot migrate", so both codes take the fallback. The fallback is a cold
move: the guest restarts on the target, and for a moment both hosts run it, which is only safe
where nothing really shares the disks (the test driver). A qemu/KVM host that supports
migration never reaches it.

Every stage checks the state the previous one left, so a repeated or interrupted step
continues where it stopped: "already" means the domain is on the target and not the source.

A console that listens on the source's management address cannot listen there on the target:
both paths give the target the definition with the target's address (`host_policy.
listen_address`; the live path as `VIR_MIGRATE_PARAM_DEST_XML`), and the target's domain type.
"""

from __future__ import annotations

from uuid import UUID

import libvirt

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import Migrated
from subsystems.libvirt import domain_xml, domains, host_policy
from subsystems.libvirt.connections import connection
from subsystems.libvirt.faults import code_of, translated, wrap
from subsystems.libvirt.host_policy import DomainSettings

__all__ = ["MIGRATION_UNSUPPORTED", "migrate"]

MIGRATION_UNSUPPORTED = frozenset({libvirt.VIR_ERR_NO_SUPPORT,
                                   libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED})
_XML = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


def migrate(vm_id: UUID, source_uri: str, target_uri: str,
            settings: DomainSettings, *, shared_storage: bool = False) -> Migrated:
    """Move the VM's domain from `source_uri` to `target_uri`, keeping its power state.
    `shared_storage`: the caller vouches that both hosts reach the disks; libvirt, which
    recognises only the shared file systems it knows, is told to take its word
    (VIR_MIGRATE_UNSAFE), else it refuses a live migration off a plain folder."""
    if source_uri == target_uri:
        raise StepFailedError(f"migrate {vm_id}: source and target are both {source_uri}",
                              retryable=False, code="invalid_arguments")
    src_conn, dst_conn = connection(source_uri), connection(target_uri)
    src = domains.lookup(src_conn, vm_id)
    dst = domains.lookup(dst_conn, vm_id)
    if src is None:
        if dst is None:
            raise StepFailedError(f"domain {vm_id} is on neither {source_uri} nor {target_uri}",
                                  retryable=False, code="not_found")
        return Migrated(vm_id=vm_id, host_uri=target_uri, how="already",
                        state=domains.state_of(dst))
    with translated(f"read domain {vm_id} on {source_uri}"):
        was_running = bool(src.isActive())
    if dst is None:  # nothing done yet: the real migration may still be tried
        try:
            return _migrate_live(src, dst_conn, vm_id, source_uri, target_uri, was_running,
                                 settings, shared_storage)
        except libvirt.libvirtError as e:
            if code_of(e) not in MIGRATION_UNSUPPORTED:
                raise wrap(e, f"migrate domain {vm_id} to {target_uri}") from e
    return _move_by_redefining(src, dst, dst_conn, vm_id, source_uri, target_uri,
                               was_running, settings)


def _migrate_live(src: libvirt.virDomain, dst_conn: libvirt.virConnect, vm_id: UUID,
                  source_uri: str, target_uri: str, was_running: bool,
                  settings: DomainSettings, shared_storage: bool) -> Migrated:
    flags = (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
             | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if shared_storage:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    flags |= libvirt.VIR_MIGRATE_LIVE if was_running else libvirt.VIR_MIGRATE_OFFLINE
    params: dict[str, str] = {}
    xml = src.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE)
    moved = _relisten(xml, source_uri, target_uri, settings)
    if moved != xml:
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = moved
    src.migrateToURI3(target_uri, params, flags)
    moved = domains.require(dst_conn, vm_id)
    return Migrated(vm_id=vm_id, host_uri=target_uri, how="live",
                    state=domains.state_of(moved))


def _move_by_redefining(src: libvirt.virDomain, dst: libvirt.virDomain | None,
                        dst_conn: libvirt.virConnect, vm_id: UUID, source_uri: str,
                        target_uri: str, was_running: bool,
                        settings: DomainSettings) -> Migrated:
    """Define on the target, start there, then power off and undefine on the source."""
    if dst is None:
        with translated(f"read definition of domain {vm_id}"):
            xml = src.XMLDesc(_XML)
        shape = domains.shape_of(dst_conn, domain_xml.arch_of(xml), settings)
        xml = domain_xml.set_domain_type(_relisten(xml, source_uri, target_uri, settings),
                                         shape.domain_type)
        with translated(f"define domain {vm_id} on {target_uri}"):
            dst = dst_conn.defineXML(xml)
    if was_running:
        with translated(f"start domain {vm_id} on {target_uri}"):
            if not dst.isActive():
                dst.create()
    # the source goes only once the target holds the domain (and runs it if it ran)
    domains.undefine(src.connect(), vm_id)
    return Migrated(vm_id=vm_id, host_uri=target_uri, how="redefined",
                    state=domains.state_of(dst))


def _relisten(xml: str, source_uri: str, target_uri: str, settings: DomainSettings) -> str:
    """The definition with consoles that listened on the source's management address
    listening on the target's."""
    return domain_xml.with_listen(
        xml, host_policy.listen_address(source_uri, settings.console_listen),
        host_policy.listen_address(target_uri, settings.console_listen))

"""libvirt's domain events, for the calls whose outcome only an event tells.

`virDomainReboot` returns as soon as the request reached the guest: a guest that ignores it
keeps running as if asked nothing, and the return value is the same. Only the reboot event
(qemu's guest reset) says that it happened. Likewise a block copy is ready (its copy in step
with the disk, so that ending it leaves a point-in-time copy) when its block job event says
so. Events need libvirt's default event loop,
registered before a connection is opened (so `connections` calls `ensure_loop` first) and run
by one daemon thread for the process. With the loop, libvirt also runs keepalive on remote
connections, so a dead host is noticed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import libvirt

from subsystems.libvirt.faults import translated

__all__ = ["BlockJobs", "ensure_loop", "watch_block_jobs", "watch_reboot"]

_lock = threading.Lock()
_started = False


def ensure_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once."""
    global _started
    with _lock:
        if _started:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run, name="libvirt-events", daemon=True).start()
        _started = True


def _run() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


@contextlib.contextmanager
def watch_reboot(conn: libvirt.virConnect, dom: libvirt.virDomain
                 ) -> Iterator[threading.Event]:
    """An Event set when the domain reboots (its guest resets) while the block runs."""
    seen = threading.Event()

    def on_reboot(_conn: Any, _dom: Any, _opaque: Any) -> None:
        seen.set()

    with translated(f"watch domain {dom.UUIDString()} for its reboot"):
        callback = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
                                               on_reboot, None)
    try:
        yield seen
    finally:
        with contextlib.suppress(libvirt.libvirtError):  # the connection may be gone
            conn.domainEventDeregisterAny(callback)


@dataclass
class BlockJobs:
    """The last status libvirt reported for each disk's block job (by target, e.g. vda)."""

    status: dict[str, int] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, targets: set[str], wanted: int, timeout: float) -> dict[str, int]:
        """Wait until every target's job is `wanted`, one fails or ends, or `timeout` s
        pass; the statuses then (a missing target has reported nothing)."""
        def settled() -> bool:
            now = {t: self.status.get(t) for t in targets}
            return all(v == wanted for v in now.values()) or any(
                v is not None and v != wanted for v in now.values())
        with self.changed:
            self.changed.wait_for(settled, timeout)
            return {t: self.status[t] for t in targets if t in self.status}


@contextlib.contextmanager
def watch_block_jobs(conn: libvirt.virConnect, dom: libvirt.virDomain) -> Iterator[BlockJobs]:
    """The domain's block job events while the block runs."""
    jobs = BlockJobs()

    def on_job(_conn: Any, _dom: Any, disk: str, _kind: int, status: int,
               _opaque: Any) -> None:
        with jobs.changed:
            jobs.status[disk] = status
            jobs.changed.notify_all()

    with translated(f"watch domain {dom.UUIDString()} for block jobs"):
        callback = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
                                               on_job, None)
    try:
        yield jobs
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(callback)

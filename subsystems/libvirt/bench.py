"""A bare libvirt baseline: how fast one host connection defines and starts domains.

The figure is the ceiling for the hypervisor plugin on that host: the plugin adds lookups,
XML building and the step round trip on top. `bench/deploy.py` calls it to print the
baseline next to the kernel's own deploy rate.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from kernel.steps.hypervisor import DefineDomain, DiskSpec, NicSpec
from subsystems.libvirt import domain_xml, domains
from subsystems.libvirt.connections import connection
from subsystems.libvirt.host_policy import DomainSettings

__all__ = ["DefineStartRate", "bare_define_start_rate"]


@dataclass(frozen=True, slots=True)
class DefineStartRate:
    """`n` domains defined and started in `seconds`."""

    uri: str
    n: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Domains defined and started per second."""
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def bare_define_start_rate(uri: str, n: int = 200, *, cleanup: bool = True) -> DefineStartRate:
    """Define and start `n` one-disk, one-NIC domains with plain libvirt calls, timed; the
    XML is built before the clock starts. With `cleanup`, they are destroyed and undefined
    afterwards (not timed)."""
    conn = connection(uri)
    shape = domains.shape_of(conn, "x86_64", DomainSettings())
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    xmls = [domain_xml.build_domain_xml(DefineDomain(
        vm_id=uuid.uuid4(), name=f"{prefix}-{i}", host_uri=uri, cpu_cores=1, cpu_mhz=1000,
        memory_mib=128, disks=(DiskSpec(path=f"/var/lib/bench/{prefix}-{i}.qcow2"),),
        nics=(NicSpec(mac=f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                      network="default"),)), shape) for i in range(n)]
    started = []
    t0 = time.perf_counter()
    for xml in xmls:
        dom = conn.defineXML(xml)
        dom.create()
        started.append(dom)
    seconds = time.perf_counter() - t0
    if cleanup:
        for dom in started:
            dom.destroy()
            dom.undefine()
    return DefineStartRate(uri=uri, n=n, seconds=seconds)

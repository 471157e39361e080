"""libvirt's own speed on a simulated host: the ceiling for the hypervisor plugin.

Usage:
    .venv/bin/python bench/libvirt_baseline.py [--domains 500] [--runs 3]

It writes a fresh test-driver host (`test:///<tmp>/host.xml`) per run and prints, median of
--runs:
  * bare libvirt: defineXML + create on one connection (`bare_define_start_rate`);
  * the hypervisor plugin's define + start handlers called in-process (no NATS, no kernel):
    what the plugin's lookups and XML building cost on top.
"""

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixtures.libvirt_host import write_test_host  # noqa: E402

from kernel.steps.hypervisor import DefineDomain, DiskSpec, NicSpec, StartDomain  # noqa: E402
from subsystems.base import StepContext  # noqa: E402
from subsystems.hypervisor.plugin import Hypervisor  # noqa: E402
from subsystems.libvirt.bench import bare_define_start_rate  # noqa: E402
from subsystems.libvirt.connections import close_all  # noqa: E402


def plugin_rate(uri: str, n: int) -> float:
    """Domains/s through the plugin's define and start handlers."""
    plugin = Hypervisor()
    plugin.open()
    ctx = StepContext(step_id=uuid.uuid4(), operation_id=uuid.uuid4(), attempt=1,
                      subsystem="hypervisor", action="define")
    steps = [DefineDomain(vm_id=uuid.uuid4(), name=f"vm-{i}", host_uri=uri, cpu_cores=1,
                          cpu_mhz=1000, memory_mib=128,
                          disks=(DiskSpec(path=f"/var/lib/vm-{i}.qcow2"),),
                          nics=(NicSpec(mac=f"52:54:00:00:{i >> 8 & 255:02x}:{i & 255:02x}",
                                        network="default"),)) for i in range(n)]
    t0 = time.perf_counter()
    for step in steps:
        plugin.define(ctx, step)
        plugin.start(ctx, StartDomain(vm_id=step.vm_id, host_uri=uri))
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    bare, plugin = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(opts.runs):
            uri = write_test_host(Path(tmp) / f"bare-{run}.xml", cpus=64, memory_mib=1 << 20)
            bare.append(bare_define_start_rate(uri, opts.domains).per_second)
            uri = write_test_host(Path(tmp) / f"plugin-{run}.xml", cpus=64, memory_mib=1 << 20)
            plugin.append(plugin_rate(uri, opts.domains))
            close_all()
    print(f"{'measure':<46} {'domains/s':>10}")
    print(f"{'bare libvirt define+start (test driver)':<46} {statistics.median(bare):>10.0f}")
    print(f"{'hypervisor plugin define+start, in-process':<46} "
          f"{statistics.median(plugin):>10.0f}")
    print(f"({opts.domains} domains per run, median of {opts.runs} runs, one connection)")


if __name__ == "__main__":
    main()

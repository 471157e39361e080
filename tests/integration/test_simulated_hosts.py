"""Simulated hosts outlive their process: what a `test:///<file>.xml` host held when the
process let it go (domains and whether they ran, networks, pools and volumes, the platform's
domain metadata) is what the next process finds. libvirt's test driver is real."""

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import libvirt
import pytest
from fixtures.libvirt_host import LibvirtTestDomain, write_test_host
from support.plugin_steps import PluginSteps

from aggregates.errors import ConfigError
from kernel.steps.hypervisor import DefineDomain, DomainDefined
from subsystems.hypervisor.plugin import make_hypervisor
from subsystems.libvirt import connections
from subsystems.libvirt.connections import close_all, connection, keep_simulated_hosts
from subsystems.libvirt.simulation import FolderInUse

_DOMAIN = """<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>
<metadata><ck:step xmlns:ck="urn:cloudkernel:hypervisor">defined-by-{name}</ck:step></metadata>
<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"""


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    close_all()
    yield
    close_all()


def test_domains_networks_and_pools_come_back_as_they_were_left(tmp_path: Path) -> None:
    already = LibvirtTestDomain(name="from-the-file", running=True)
    uri = write_test_host(tmp_path / "h1.xml", cpus=4, memory_mib=8192, domains=[already])
    kept_dir = tmp_path / "kept"
    running, stopped = uuid4(), uuid4()
    with keep_simulated_hosts(kept_dir):
        conn = connection(uri)
        conn.lookupByName("from-the-file").destroy()  # a domain of the file, now stopped
        conn.defineXML(_DOMAIN.format(name="runs", uuid=running)).create()
        conn.defineXML(_DOMAIN.format(name="stays-off", uuid=stopped))
        conn.networkDefineXML("<network><name>net-1</name><bridge name='ckbr1'/>"
                              "<ip address='10.9.0.1' netmask='255.255.255.0'><dhcp>"
                              "<host mac='52:54:00:00:00:01' ip='10.9.0.5'/></dhcp></ip>"
                              "</network>").create()
        pool = conn.storagePoolDefineXML(
            f"<pool type='dir'><name>pool-1</name><target><path>{tmp_path}/p</path>"
            "</target></pool>")
        pool.create()
        pool.createXML("<volume><name>disk-1</name><capacity>1048576</capacity></volume>")
    close_all()  # the process is gone: nothing of it is left in memory

    # without the kept state, the file alone knows one running domain and nothing else
    plain = libvirt.open(uri)
    assert [d.name() for d in plain.listAllDomains()] == ["from-the-file"]
    plain.close()

    with keep_simulated_hosts(kept_dir):
        conn = connection(uri)
        states = {d.name(): d.state()[0] for d in conn.listAllDomains()}
        assert states == {"from-the-file": libvirt.VIR_DOMAIN_SHUTOFF,
                          "runs": libvirt.VIR_DOMAIN_RUNNING,
                          "stays-off": libvirt.VIR_DOMAIN_SHUTOFF}
        assert conn.lookupByName("runs").UUIDString() == str(running)
        assert "defined-by-runs" in conn.lookupByName("runs").XMLDesc(0)
        assert all(d.isPersistent() for d in conn.listAllDomains())
        net = conn.networkLookupByName("net-1")
        assert "52:54:00:00:00:01" in net.XMLDesc(0) and "10.9.0.5" in net.XMLDesc(0)
        volumes = conn.storagePoolLookupByName("pool-1").listAllVolumes()
        assert [v.name() for v in volumes] == ["disk-1"]
        assert volumes[0].info()[1] == 1048576
        info = conn.getInfo()
        assert (info[1], info[2]) == (8192, 4)  # the node's description is the file's


def test_the_flusher_writes_changes_while_the_process_runs(tmp_path: Path) -> None:
    uri = write_test_host(tmp_path / "h2.xml")
    with keep_simulated_hosts(tmp_path / "kept", interval=3600) as kept:  # flushed by hand
        conn = connection(uri)
        conn.defineXML(_DOMAIN.format(name="late", uuid=uuid4())).create()
        state = kept.state_file(uri)
        assert "late" not in (state.read_text() if state.exists() else "")
        assert kept.flush() == [uri]  # written once...
        assert "<name>late</name>" in state.read_text()
        assert kept.flush() == []  # ...and not again while nothing changed
        conn.lookupByName("late").destroy()
        assert kept.flush() == [uri]
        assert "<test:runstate>5</test:runstate>" in state.read_text()


def test_the_flusher_thread_writes_within_its_interval(tmp_path: Path) -> None:
    uri = write_test_host(tmp_path / "h3.xml")
    with keep_simulated_hosts(tmp_path / "kept", interval=0.05) as kept:
        connection(uri).defineXML(_DOMAIN.format(name="soon", uuid=uuid4()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                kept.state_file(uri).exists() and "soon" in kept.state_file(uri).read_text()):
            time.sleep(0.05)
        assert "<name>soon</name>" in kept.state_file(uri).read_text()


def test_hosts_that_are_not_simulated_files_are_left_alone(tmp_path: Path) -> None:
    with keep_simulated_hosts(tmp_path / "kept") as kept:
        connection("test:///default").listAllDomains()
        assert kept.open_uri("test:///default") == "test:///default"
        assert kept.flush(everything=True) == []
    assert list((tmp_path / "kept").glob("*.xml")) == []


def test_a_process_keeps_one_state_folder(tmp_path: Path) -> None:
    with keep_simulated_hosts(tmp_path / "a"), pytest.raises(RuntimeError, match="already"), \
            keep_simulated_hosts(tmp_path / "b"):
        pass
    assert connections._simulated is None


def test_the_hypervisor_plugin_keeps_hosts_when_configured(tmp_path: Path) -> None:
    uri = write_test_host(tmp_path / "h4.xml")
    plugin = make_hypervisor({"simulated_hosts_dir": str(tmp_path / "kept")})
    plugin.open()
    try:
        connection(uri).defineXML(_DOMAIN.format(name="kept-by-plugin", uuid=uuid4()))
    finally:
        plugin.close()
    assert connections._simulated is None
    [state] = (tmp_path / "kept").glob("*.xml")
    assert "<name>kept-by-plugin</name>" in state.read_text()
    for bad in (5, "", "  "):
        with pytest.raises(ConfigError, match="simulated_hosts_dir"):
            make_hypervisor({"simulated_hosts_dir": bad})


def test_a_step_is_written_through_before_its_outcome_is_made(tmp_path: Path) -> None:
    """What a reported step changed is on disk when the runner returns: a kill right after
    the report (no flusher pass, no close) loses none of it."""
    uri = write_test_host(tmp_path / "h5.xml")
    vm_id = uuid4()
    with keep_simulated_hosts(tmp_path / "kept", interval=3600) as kept:  # no flusher pass
        steps = PluginSteps("hypervisor")
        done = steps.ok(DefineDomain(vm_id=vm_id, name="through", host_uri=uri, cpu_cores=1,
                                     cpu_mhz=1000, memory_mib=64, start=True), DomainDefined)
        assert done.vm_id == vm_id
        text = kept.state_file(uri).read_text()  # read before anything else runs
        assert "<name>through</name>" in text and "<test:runstate>1</test:runstate>" in text
        steps.plugin.close()


def test_a_step_not_written_through_is_not_reported_done(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    uri = write_test_host(tmp_path / "h6.xml")
    with keep_simulated_hosts(tmp_path / "kept", interval=3600) as kept:
        def full(*_: object) -> bool:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(kept, "_write", full)
        steps = PluginSteps("hypervisor")
        out = steps.run(DefineDomain(vm_id=uuid4(), name="lost", host_uri=uri, cpu_cores=1,
                                     cpu_mhz=1000, memory_mib=64))
        assert (out.ok, out.error_code, out.retryable) == (False, "unsettled", True)
        monkeypatch.undo()
        steps.plugin.close()


_KEEPER = """
import sys, time
from pathlib import Path
from uuid import UUID
sys.path[:0] = [{root!r}, {tests!r}]
from support.plugin_steps import PluginSteps
from kernel.steps.hypervisor import DefineDomain, DomainDefined
from subsystems.libvirt.connections import keep_simulated_hosts
with keep_simulated_hosts(Path({folder!r}), interval=3600):
    steps = PluginSteps("hypervisor")
    for n, vm_id in enumerate({vm_ids!r}):
        steps.ok(DefineDomain(vm_id=UUID(vm_id), name=f"vm-{{n}}", host_uri={uri!r},
                              cpu_cores=1, cpu_mhz=1000, memory_mib=64, start=True),
                 DomainDefined)
    print("reported", flush=True)
    time.sleep(600)
"""


def test_a_worker_killed_after_its_reports_leaves_its_hosts_as_reported(tmp_path: Path) -> None:
    """The shape the chaos tests run: a process serving simulated hosts is SIGKILLed after
    reporting its steps; the next process finds every reported domain, running, and holds the
    folder it left (the dead process's lock went with it)."""
    uri = write_test_host(tmp_path / "h7.xml")
    folder = tmp_path / "kept"
    vm_ids = [str(uuid4()) for _ in range(5)]
    root = Path(__file__).resolve().parents[2]
    script = _KEEPER.format(root=str(root), tests=str(root / "tests"), folder=str(folder),
                            vm_ids=vm_ids, uri=uri)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "reported"
        with pytest.raises(FolderInUse):  # held while that process lives
            keep_simulated_hosts(folder).__enter__()
    finally:
        proc.kill()
        proc.wait(10)
    with keep_simulated_hosts(folder):
        conn = connection(uri)
        assert {d.UUIDString(): d.state()[0] for d in conn.listAllDomains()} == {
            v: libvirt.VIR_DOMAIN_RUNNING for v in vm_ids}


def test_steps_that_end_together_share_a_write_and_a_later_change_is_written_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = write_test_host(tmp_path / "h8.xml")
    with keep_simulated_hosts(tmp_path / "kept", interval=3600) as kept:
        conn = connection(uri)
        writes: list[str] = []
        real = kept._write_now

        def counted(u: str, c: libvirt.virConnect) -> bool:
            writes.append(u)
            return real(u, c)

        monkeypatch.setattr(kept, "_write_now", counted)
        kept.write_through([uri])  # (makes the host's writing lock)
        writes.clear()
        conn.defineXML(_DOMAIN.format(name="first", uuid=uuid4()))
        conn.defineXML(_DOMAIN.format(name="second", uuid=uuid4()))
        writing = kept._writing[uri]
        with writing:  # a write in progress: both steps' write-throughs wait behind it
            waiting = [threading.Thread(target=kept.write_through, args=([uri],))
                       for _ in range(2)]
            for t in waiting:
                t.start()
            deadline = time.monotonic() + 5
            while kept._asked[uri] < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        for t in waiting:
            t.join(5)
        assert writes == [uri]  # one write covered both
        text = kept.state_file(uri).read_text()
        assert "<name>first</name>" in text and "<name>second</name>" in text
        conn.defineXML(_DOMAIN.format(name="third", uuid=uuid4()))
        kept.write_through([uri])  # asked after that write began: written again
        assert writes == [uri, uri]
        assert "<name>third</name>" in kept.state_file(uri).read_text()

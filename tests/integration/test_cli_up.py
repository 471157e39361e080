"""`cloudkernel up` as a process: data folder, migrations, NATS, inventory, then Ctrl-C."""

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from aggregates.plan import Plan, PlannedStep
from gateways.stream.embedded import EmbeddedNatsServer
from kernel.operations import OperationEngine
from kernel.settings import Settings
from kernel.store.application import PlatformApplication, open_application

CLI = [sys.executable, "-m", "gateways.cli.main"]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_up(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    full = {**os.environ, "CLOUDKERNEL_DATA_DIR": str(tmp_path / "data"),
            "CLOUDKERNEL_API_PORT": str(free_port()), "PYTHONPATH": str(ROOT),
            "CLOUDKERNEL_ENDUSER_PORT": str(free_port()),
            "CLOUDKERNEL_EC2_PORT": str(free_port()),
            "CLOUDKERNEL_CONSOLE_PORT": str(free_port()), **env}
    return subprocess.Popen([*CLI, "up"], cwd=tmp_path, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def audit_reality(tmp_path: Path, port: int) -> subprocess.CompletedProcess[str]:
    """`cloudkernel audit reality --json` against the running `up` (its workers answer for
    the hosts, whose test-driver state lives in that process)."""
    env = {**os.environ, "CLOUDKERNEL_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(ROOT), "CLOUDKERNEL_NATS_PORT": str(port)}
    return subprocess.run([*CLI, "audit", "reality", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def wait_until_up(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stdout is not None
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if "cloudkernel is up" in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError("cloudkernel up did not come up:\n" + "".join(seen))


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return out


async def jetstream_works(url: str) -> int:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        ack = await js.publish("probe.x", b"hello")
        return int(ack.seq)
    finally:
        await nc.close()


async def events_in_stream(url: str) -> int:
    """How many events the relay put in EVENTS, once it caught up with the log."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        for _ in range(100):
            info = await js.stream_info("EVENTS")
            if info.state.messages >= 29:
                break
            await asyncio.sleep(0.1)
        return int(info.state.messages)
    finally:
        await nc.close()


def log_head(settings: Settings) -> int:
    app = open_application(PlatformApplication, settings)
    try:
        return app.recorder.max_notification_id() or 0
    finally:
        app.close()


def run_an_echo_operation(settings: Settings, key: str = "echo-1") -> str:
    """Submit a two-step echo operation through the store; wait for the running platform."""
    app = open_application(PlatformApplication, settings)
    try:
        engine = OperationEngine(app)
        a = PlannedStep(step_id=uuid.uuid4(), subsystem="echo", action="echo",
                        args=msgspec.Raw(b'{"message": "hi"}'))
        b = PlannedStep(step_id=uuid.uuid4(), subsystem="echo", action="echo",
                        args=msgspec.Raw(b'{"message": "there"}'), depends_on=(a.step_id,))
        out = engine.submit("test.echo", Plan(steps=(a, b)), idempotency_key=key)
        op_id = uuid.UUID(msgspec.json.decode(out.result)["operation_id"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            op = app.repository.get(op_id)
            if op.is_finished:
                return str(op.state.value)
            time.sleep(0.1)
        return "unfinished"
    finally:
        app.close()


def projection_caught_up(tmp_path: Path, name: str, timeout: float = 15) -> bool:
    """`cloudkernel projections status --json` shows `name` at the log head."""
    env = {**os.environ, "CLOUDKERNEL_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(ROOT)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([*CLI, "projections", "status", "--json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        status = {p["name"]: p for p in json.loads(out.stdout)}
        if status[name]["lag_positions"] == 0 and status[name]["position"] > 0:
            return True
        time.sleep(0.5)
    return False


def services_alive(tmp_path: Path, nats_port: int, timeout: float = 60,
                   without: str = "") -> dict[str, Any]:
    """`cloudkernel services --json` by name, once each of the three services has exactly one
    live instance (and none is instance `without`)."""
    env = {**os.environ, "CLOUDKERNEL_DATA_DIR": str(tmp_path / "data"),
           "CLOUDKERNEL_NATS_PORT": str(nats_port), "PYTHONPATH": str(ROOT)}
    deadline, found = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        out = subprocess.run([*CLI, "services", "--json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out
        found = json.loads(out.stdout)
        if len(found) == 3 and all(s["live"] == 1 and s["instances"][0]["instance_id"] != without
                                   for s in found):
            return {s["name"]: s for s in found}
        time.sleep(0.5)
    raise AssertionError(f"the services did not come up: {found}")


def read_banner(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The web page's URL and the admin password `up` prints once, after the "up" line."""
    assert proc.stdout is not None
    lines: list[str] = []
    while len(lines) < 20 and not any("password:" in line for line in lines):
        lines.append(proc.stdout.readline())  # a log line of another thread may come first
    text = "".join(lines)
    url = re.search(r"admin web page at (http://\S+)/", text)
    password = re.search(r"password:\s+(\S+)", text)
    assert url and password and "log in as: admin" in text, lines
    return url[1], password[1]


def web_login(url: str, password: str) -> tuple[str, int]:
    """The page's HTML, and the status of a VM list with the bearer token of a login."""
    import urllib.request

    page = urllib.request.urlopen(f"{url}/", timeout=10).read().decode()
    login = urllib.request.Request(f"{url}/v1/login", method="POST", data=json.dumps(
        {"username": "admin", "password": password}).encode(),
        headers={"Content-Type": "application/json"})
    token = json.loads(urllib.request.urlopen(login, timeout=10).read())["token"]
    listing = urllib.request.Request(f"{url}/v1/vms",
                                     headers={"Authorization": f"Bearer {token}"})
    return page, urllib.request.urlopen(listing, timeout=10).status


def test_up_on_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    proc = start_up(tmp_path, CLOUDKERNEL_NATS_PORT=str(port))
    try:
        log = wait_until_up(proc)
        # the admin web page and a first credential for it, shown once
        url, password = read_banner(proc)
        page, status = web_login(url, password)
        assert "<html" in page.lower() and status == 200
        assert "registered 22 entities" in log
        assert asyncio.run(jetstream_works(f"nats://127.0.0.1:{port}")) == 1
        assert (tmp_path / "data" / "platform.db").is_file()
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()
        assert "kernel, event relay, command intake, webhooks," in log and "echo" in log
        assert run_an_echo_operation(Settings(data_dir=tmp_path / "data")) == "Succeeded"
        assert asyncio.run(events_in_stream(f"nats://127.0.0.1:{port}")) >= 22 + 7
        # The first start made an admin key and printed it once: it signs commands on NATS.
        key_id = re.search(r"key id: (ck_[0-9a-f]+)", log)
        secret = re.search(r"secret: ([0-9a-f]{64})", log)
        assert key_id and secret, log
        sent = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "integrator" / "send_command.py"),
             "operation.cancel", f'{{"operation_id": "{uuid.uuid4()}"}}',
             "--url", f"nats://127.0.0.1:{port}", "--key-id", key_id[1],
             "--secret", secret[1], "--idempotency-key", "cancel-1"],
            capture_output=True, text=True, timeout=60)
        assert sent.returncode == 1 and '"not_found"' in sent.stdout, sent
        # The projections follow the log: the operation's row reached its end.
        assert projection_caught_up(tmp_path, "operations")
        # The services run as their own processes, registered and alive in the directory.
        alive = services_alive(tmp_path, port)
        assert {n: s["state"] for n, s in alive.items()} == {
            "ec2": "Enabled", "enduser": "Enabled", "console": "Enabled"}
        # Killing one leaves orchestration and the other service alone; up starts it again.
        ec2 = alive["ec2"]["instances"][0]
        os.kill(ec2["pid"], signal.SIGKILL)
        assert run_an_echo_operation(Settings(data_dir=tmp_path / "data"), "echo-2") == \
            "Succeeded"
        again = services_alive(tmp_path, port, without=ec2["instance_id"])
        assert again["ec2"]["instances"][0]["pid"] != ec2["pid"]
        assert [i["instance_id"] for i in again["enduser"]["instances"]] == \
            [i["instance_id"] for i in alive["enduser"]["instances"]]
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "cloudkernel stopped" in out
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the embedded nats-server is gone
    # up sealed its log from the first start (a key made then) and checkpointed it on stop
    assert "audit: created the log's signing key" in log
    verified = subprocess.run(
        [*CLI, "audit", "verify"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "CLOUDKERNEL_DATA_DIR": str(tmp_path / "data"),
             "PYTHONPATH": str(ROOT)})
    assert verified.returncode == 0, verified
    assert "OK: the store matches every checkpoint" in verified.stdout
    assert f"{log_head(Settings(data_dir=tmp_path / 'data'))} events sealed" in verified.stdout

    # a second start finds everything in place and writes nothing new
    head = log_head(Settings(data_dir=tmp_path / "data"))
    proc = start_up(tmp_path, CLOUDKERNEL_NATS_PORT=str(port))
    try:
        log = wait_until_up(proc)
        assert "(loaded before)" in log
        assert "secret:" not in log  # the admin key exists: no secret printed again
    finally:
        stop(proc)
    assert log_head(Settings(data_dir=tmp_path / "data")) == head


def test_up_on_postgres_and_an_external_nats(tmp_path: Path, pg_dsn: str,
                                             nats_server: EmbeddedNatsServer) -> None:
    proc = start_up(tmp_path, CLOUDKERNEL_STORE="postgres", CLOUDKERNEL_POSTGRES_DSN=pg_dsn,
                    CLOUDKERNEL_NATS_URLS=nats_server.url)
    try:
        log = wait_until_up(proc)
        assert f"using NATS cluster {nats_server.url}" in log
        assert "embedded nats-server" not in log
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert log_head(Settings(store="postgres", postgres_dsn=pg_dsn)) == 22


def test_bad_settings_stop_start_up_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "up"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "CLOUDKERNEL_API_PORT": "eighty"}, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("cloudkernel: error: setting api_port (from "
                                   "CLOUDKERNEL_API_PORT): expected an integer from 1 to "
                                   "65535, got 'eighty'")


def test_an_unreachable_nats_cluster_is_named(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    proc = subprocess.run([*CLI, "up"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "CLOUDKERNEL_DATA_DIR": str(tmp_path / "d"),
                               "CLOUDKERNEL_NATS_URLS": url}, timeout=60)
    assert proc.returncode == 2
    assert f"setting nats_urls: cannot connect to {url}" in proc.stderr


def test_up_deploys_a_vm_from_signed_nats_commands(
        tmp_path: Path, libvirt_host_factory: Callable[..., str]) -> None:
    # The whole platform as one process: commands over NATS, the kernel, every worker, and
    # the read models, on the embedded default.
    from support.cloud import write_inventory

    uris = [libvirt_host_factory(f"kvm-{i}") for i in range(2)]
    inventory = write_inventory(tmp_path, uris)
    port = free_port()
    proc = start_up(tmp_path, CLOUDKERNEL_NATS_PORT=str(port),
                    CLOUDKERNEL_INVENTORY_FILE=str(inventory))
    url = f"nats://127.0.0.1:{port}"
    try:
        log = wait_until_up(proc)
        key_id = re.search(r"key id: (ck_[0-9a-f]+)", log)
        secret = re.search(r"secret: ([0-9a-f]{64})", log)
        assert key_id and secret, log

        def send(command: str, body: dict[str, object]) -> dict[str, object]:
            sent = subprocess.run(
                [sys.executable, str(ROOT / "examples" / "integrator" / "send_command.py"),
                 command, json.dumps(body), "--url", url, "--key-id", key_id[1],
                 "--secret", secret[1], "--idempotency-key", f"{command}-{uuid.uuid4()}"],
                capture_output=True, text=True, timeout=60)
            assert sent.returncode == 0, sent
            return json.loads(sent.stdout)  # type: ignore[no-any-return]

        settings = Settings(data_dir=tmp_path / "data")
        app = open_application(PlatformApplication, settings)
        try:
            def ids(topic: str) -> list[str]:
                return [str(n.originator_id) for n in app.recorder.select_notifications(
                    start=None, limit=1000, topics=(topic,))]

            def finished(op_id: object) -> str:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    op = app.repository.get(uuid.UUID(str(op_id)))
                    if op.is_finished:
                        return str(op.state.value)
                    time.sleep(0.1)
                return "unfinished"

            [template], [store], [zone], [offering] = (
                ids("template.Registered"), ids("image_store.Added"), ids("zone.Created"),
                ids("service_offering.Created"))
            download = send("template.download", {"template_id": template,
                                                  "image_store_id": store})
            assert finished(download["result"]["operation_id"]) == "Succeeded"  # type: ignore[index]
            deployed = send("vm.deploy", {"name": "web-1", "account": "alice", "zone_id": zone,
                                          "service_offering_id": offering,
                                          "template_id": template})
            result = deployed["result"]
            assert finished(result["operation_id"]) == "Succeeded", log  # type: ignore[index]
            vm = app.repository.get(uuid.UUID(result["vm_id"]))  # type: ignore[index]
            assert vm.state.value == "Running"
        finally:
            app.close()
        assert projection_caught_up(tmp_path, "vms")
        checked = audit_reality(tmp_path, port)
        assert checked.returncode == 0, (checked.stdout, checked.stderr)
        assert sorted(json.loads(checked.stdout)["hosts"]) == ["kvm-0", "kvm-1"]
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out


def test_the_sample_inventory_deploys_a_vm_out_of_the_box(tmp_path: Path) -> None:
    # What the README's "Try it" says: `up` on the sample inventory as shipped, then the
    # example script downloads a template and deploys a VM with the admin key `up` printed.
    # The sample writes its storage beside itself, so it runs from a copy.
    examples = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", examples,
                    ignore=shutil.ignore_patterns("storage", "__pycache__"))
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = start_up(tmp_path, CLOUDKERNEL_NATS_PORT=str(port),
                    CLOUDKERNEL_INVENTORY_FILE=str(examples / "inventory.toml"))
    try:
        log = wait_until_up(proc)
        assert "registered 22 entities" in log
        key_id = re.search(r"key id: (ck_[0-9a-f]+)", log)
        secret = re.search(r"secret: ([0-9a-f]{64})", log)
        assert key_id and secret, log

        def deploy(name: str) -> str:
            run = subprocess.run(
                [sys.executable, str(examples / "integrator" / "deploy_sample_vm.py"),
                 "--name", name, "--wait", "40"],
                env={**os.environ, "CK_NATS_URL": url, "CK_KEY_ID": key_id[1],
                     "CK_KEY_SECRET": secret[1]},
                capture_output=True, text=True, timeout=90)
            assert run.returncode == 0, (run.stdout, run.stderr)
            return run.stdout

        first = deploy("web-1")
        # the template was downloaded from the shipped file, verified, then the VM started
        assert "template empty-qcow2: " in first and "(Registered)" in first
        assert "template.Downloaded" in first and "operation.Succeeded" in first
        found = re.search(r"vm web-1 \(([0-9a-f-]{36})\) is Running", first)
        assert found and f"vm.Started {found[1]}" in first, first
        # a second VM needs no download: the template is Ready
        second = deploy("web-2")
        assert "(Ready)" in second and "template.download" not in second
        found_2 = re.search(r"vm web-2 \(([0-9a-f-]{36})\) is Running", second)
        assert found_2, second

        # The test driver's domains live in the `up` process: what its hypervisor worker
        # reported is in the log, and the volumes are files.
        deployed = re.search(r"vm.deploy: operation ([0-9a-f-]{36})", first)
        assert deployed, first
        app = open_application(PlatformApplication, Settings(data_dir=tmp_path / "data"))
        try:
            vm = app.repository.get(uuid.UUID(found[1]))
            assert vm.state.value == "Running" and vm.host_id is not None
            host = app.repository.get(vm.host_id)
            assert host.uri == f"test://{examples}/hosts/{host.name}.xml"
            op = app.repository.get(uuid.UUID(deployed[1]))
            [define] = [r for r in op.forward_steps() if r.subsystem == "hypervisor"]
            domain = json.loads(bytes(define.result))
            assert (domain["vm_id"], domain["host_uri"], domain["domain_type"]) == \
                (str(vm.id), host.uri, "test")
            assert domain["created"] and domain["started"]
            volume = app.repository.get(vm.root_volume_id)
            assert volume.path is not None and Path(volume.path).is_file()
            assert Path(volume.path).parent.parent == examples / "storage"
            assert Path(volume.path).read_bytes() == \
                (examples / "templates" / "empty-1m.qcow2").read_bytes()
            template = app.repository.get(vm.template_id)
            assert template.state.value == "Ready"
            assert template.checksum.endswith(hashlib.sha256(
                (examples / "templates" / "empty-1m.qcow2").read_bytes()).hexdigest())
            assert list((examples / "storage" / "secondary-1").iterdir()) == \
                [examples / "storage" / "secondary-1" / f"{template.id}.qcow2"]
        finally:
            app.close()
        assert projection_caught_up(tmp_path, "vms")
        checked = audit_reality(tmp_path, port)  # eight hosts, two VMs, nothing else
        assert checked.returncode == 0, (checked.stdout, checked.stderr)
        assert len(json.loads(checked.stdout)["hosts"]) == 8
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out

    # A restart keeps the simulated hosts' domains: both VMs still run, and the reconciler,
    # reporting every host several times, finds them where the model has them.
    kept = list((tmp_path / "data" / "simulated-hosts").glob("*.xml"))
    assert kept and any(found[1] in f.read_text() for f in kept), kept
    proc = start_up(tmp_path, CLOUDKERNEL_NATS_PORT=str(port),
                    CLOUDKERNEL_INVENTORY_FILE=str(examples / "inventory.toml"),
                    CLOUDKERNEL_OBSERVE_INTERVAL_SECONDS="0.2")
    try:
        wait_until_up(proc)
        time.sleep(2.0)  # ten reports: a missing domain is noticed after two
        app = open_application(PlatformApplication, Settings(data_dir=tmp_path / "data"))
        try:
            vms = [app.repository.get(uuid.UUID(f[1])) for f in (found, found_2)]
            assert all(v.state.value == "Running" for v in vms), [v.state for v in vms]
        finally:
            app.close()
        third = deploy("web-3")  # the restarted hosts take new work beside the old
        assert re.search(r"vm web-3 \(([0-9a-f-]{36})\) is Running", third), third
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out

"""The platform as separate processes under a random, overlapping load (issue 16, defect 6).

`cloudkernel kernel`, `intake`, `api`, `relay`, `projections run` and one `worker` per
subsystem run as processes of their own on a real PostgreSQL and a real nats-server, with
hosts from libvirt's test driver. The intake and the API accept commands through engines of
their own while the kernel advances the operations with its cache of aggregates: every
process may hold a stale view (../shared/PROOF.md, the "split processes" shape).

A seeded script (printed; `CLOUDKERNEL_SPLIT_SEED` replays it, `CLOUDKERNEL_SPLIT_COMMANDS`
sizes it) of a couple of hundred commands is sent concurrently, each through the intake
(signed NATS request) or the admin API (signed HTTP): deploys, starts (twice), stops,
reboots, migrations, destroys with and without expunge, data volumes created (some
attached at once), attached, detached, resized, snapshotted and deleted, cancels of earlier
operations, and earlier commands again with the same idempotency key or a fresh one. Ids of
new VMs and volumes come from the seed, so the script is the same on every replay (the
timing is not).

It runs twice: on one nats-server (one kernel, leasing every partition), and on a 3-node
NATS cluster (`sync_interval: always`, every stream R3) whose node leading the EVENTS stream
is killed (SIGKILL) a third of the way through the load, and the one leading STEPS two thirds
of the way, each started again a few seconds later; there the client sends a command that got
no answer again with its idempotency key, as a retrying client does, and two of each process
run side by side (kernels sharing the partitions by leases, relays, projection runners,
intakes, APIs taking commands in turn, planner and network guru workers; one worker of each
subsystem whose test-driver hosts live in its process). There a kernel is SIGKILLed and
started again, one of each edge process too, then every worker holding test-driver hosts
(each writes its hosts through to its data folder before reporting a step), and the other
kernel is frozen past its leases (`upset_kernels`).

At quiescence (at most 120 s) the test checks PROOF.md's invariants 1 to 7
(`support.invariants`): every operation ended and no entity queue is held or waited for;
no operation ever ran a step on an entity it did not hold (read from the log, transaction by
transaction); no VM, volume or snapshot is left in a transition; each host's claims are
exactly the resources of the VMs running there and no pool claims a volume twice or one
that is gone; each Running VM's domain runs once, on its host, and no other domain exists,
as the hypervisor worker reports its hosts (the test driver's state lives in that process);
EVENTS holds the log's events in order; the read models equal a replay; the log, sealed into
signed checkpoints, verifies against them; refused requests through both channels (a forged
signature, a made-up key id, a command the key may not send, a body that is not JSON) move
no log head, and each refusal of credentials or of a command is audited. No command gets an
internal error or no answer, and a command sent again with its key gets its first answer.
The processes' logs, the script with its answers (`load.jsonl`) and the event log
(`log.jsonl`) are left in the test's `logs` folder.

On libvirt's test driver a host's state lives in the process that opened it, so the
snapshot worker does not see the storage pools the storage worker made: `volume.snapshot`
fails cleanly here (`not_found`: the pool does not exist), which still exercises its
failure path; on a real libvirtd the workers share the host.
"""

import asyncio
import dataclasses
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fixtures import PostgresServer, create_database, drop_database, with_dbname
from fixtures.nats_cluster import NatsCluster
from fixtures.processes import free_port
from support.cloud import write_inventory
from support.invariants import (
    audit_findings,
    domain_findings,
    dump_log,
    exclusive_findings,
    ids_of,
    metrics_findings,
    platform_findings,
    read_model_findings,
    reality_findings,
    refusal_findings,
    stream_findings,
    unfinished,
)
from support.split_platform import (
    Part,
    Reply,
    Senders,
    SplitPlatform,
    start_split_platform,
)

from aggregates.operation import Operation
from gateways.access import Keyring
from kernel.bootstrap import open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.contracts.events import EVENTS_STREAM
from kernel.contracts.steps import RESULTS_STREAM, STEPS_STREAM
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from kernel.store.application import KernelApplication, PlatformApplication, open_application

MIB = 1024**2
EXTERNAL_POSTGRES_ENV = "CLOUDKERNEL_TEST_POSTGRES_DSN"  # as in tests/conftest.py
SUBSYSTEMS = ["planner", "networkguru", "networkelement", "storage", "snapshot", "hypervisor"]
HOST_HOLDERS = ["networkelement", "storage", "snapshot", "hypervisor"]
QUIESCENCE_SECONDS = 120
IN_FLIGHT = 8  # commands sent at once
FIRST_VMS = 10
# what a command may be refused with under this load: it lost a race, or no longer applies
REFUSALS = {"invalid", "conflict", "not_found"}


# --------------------------------------------------------------------------- the script


@dataclass
class Item:
    """One command of the script; `after`: an earlier item whose answer it needs."""

    index: int
    kind: str
    channel: str
    tag: str
    body: dict[str, Any]
    key: str
    after: int | None = None
    pause: float = 0.0


@dataclass
class Ids:
    """What the prepared cloud has: zone, offering, Ready template, implemented network."""

    zone: str
    offering: str
    template: str
    network: str


@dataclass
class Script:
    """A seeded list of commands over VMs and volumes whose ids the seed chose."""

    seed: int
    ids: Ids
    items: list[Item] = field(default_factory=list)
    vms: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def add(self, kind: str, tag: str, body: dict[str, Any], *, after: int | None = None,
            key: str | None = None) -> Item:
        index = len(self.items)
        # a cancel follows its target's answer closely, to meet its operation under way
        pause = self.rng.uniform(0, 1.0) * (0.1 if kind == "cancel" else 1)
        item = Item(index, kind, self.rng.choice(["intake", "api"]), tag, body,
                    key or f"s{self.seed}-{index}", after, pause)
        self.items.append(item)
        return item

    def deploy(self) -> None:
        vm_id = self.uuid()
        networks = [self.ids.network] if self.rng.random() < 0.5 else []
        self.add("deploy", "vm.deploy", {
            "name": f"vm-{len(self.vms)}", "account": "alice", "zone_id": self.ids.zone,
            "service_offering_id": self.ids.offering, "template_id": self.ids.template,
            "network_ids": networks, "vm_id": vm_id})
        self.vms.append(vm_id)

    def create_volume(self) -> None:
        volume_id, size = self.uuid(), self.rng.randint(1, 2) * MIB
        body: dict[str, Any] = {"name": f"data-{len(self.volumes)}", "account": "alice",
                                "zone_id": self.ids.zone, "size_bytes": size,
                                "volume_id": volume_id}
        if self.rng.random() < 0.3:
            body["vm_id"] = self.rng.choice(self.vms)
        self.add("volume.create", "volume.create", body)
        self.volumes.append(volume_id)
        self.sizes[volume_id] = size

    def one_more(self) -> None:
        rng, vm = self.rng, self.rng.choice(self.vms)
        volume = rng.choice(self.volumes) if self.volumes else None
        kind = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        if kind == "deploy":
            self.deploy()
        elif kind == "start_twice":
            self.add("start", "vm.start", {"vm_id": vm})
            self.add("start", "vm.start", {"vm_id": vm})
        elif kind in ("start", "reboot", "migrate"):
            self.add(kind, f"vm.{kind}", {"vm_id": vm})
        elif kind == "stop":
            self.add(kind, "vm.stop", {"vm_id": vm, "force_after_seconds": rng.choice([0, 2])})
        elif kind == "destroy":
            expunge = rng.random() < 0.5
            self.add(f"destroy{'+expunge' if expunge else ''}", "vm.destroy",
                     {"vm_id": vm, "expunge": expunge})
        elif kind == "volume.create" or volume is None:
            self.create_volume()
        elif kind == "volume.attach":
            self.add(kind, kind, {"volume_id": volume, "vm_id": vm})
        elif kind in ("volume.detach", "volume.snapshot"):
            self.add(kind, kind, {"volume_id": volume})
        elif kind == "volume.resize":
            self.sizes[volume] += rng.randint(1, 2) * MIB
            self.add(kind, kind, {"volume_id": volume, "size_bytes": self.sizes[volume]})
        elif kind == "volume.delete":
            self.add(kind, kind, {"volume_id": volume, "expunge": rng.random() < 0.7})
        elif kind == "cancel":
            target = rng.randrange(max(0, len(self.items) - 6), len(self.items))
            self.add(kind, "operation.cancel", {"reason": "the test changed its mind"},
                     after=target)
        else:  # the same command again: with its key (a client's retry) or a fresh one
            earlier = self.items[rng.randrange(len(self.items))]
            same = kind == "same_key"
            self.add(kind, earlier.tag, {}, after=earlier.index,
                     key=earlier.key if same else None)


WEIGHTS = {"deploy": 6, "start": 8, "start_twice": 4, "stop": 10, "reboot": 6, "migrate": 3,
           "destroy": 5, "volume.create": 8, "volume.attach": 7, "volume.detach": 7,
           "volume.resize": 5, "volume.snapshot": 5, "volume.delete": 4, "cancel": 8,
           "same_key": 6, "fresh_key": 6}


def make_script(seed: int, ids: Ids, count: int) -> Script:
    """The first VMs, then `count` commands in all, drawn from the seed."""
    script = Script(seed, ids)
    for _ in range(FIRST_VMS):
        script.deploy()
    while len(script.items) < count:
        script.one_more()
    return script


async def drive(senders: Senders, script: Script,
                replies: dict[int, Reply | None]) -> dict[int, Reply | None]:
    """Send the script, IN_FLIGHT commands at a time, in its order; each answer by index
    into `replies` as it comes (None: a cancel or a retry of a command that started no
    operation, not sent)."""
    sent: dict[int, dict[str, Any]] = {}  # the body each command was sent with
    answered = {item.index: asyncio.Event() for item in script.items}
    items = iter(script.items)

    async def sender() -> None:
        for item in items:
            await asyncio.sleep(item.pause)
            body: dict[str, Any] | None = item.body
            if item.after is not None:
                await answered[item.after].wait()
            if item.kind == "cancel":
                target = replies[item.after]  # type: ignore[index]
                body = None if target is None or target.operation_id is None else \
                    {**item.body, "operation_id": target.operation_id}
            elif item.after is not None:  # the same command again, as it was sent
                body = sent.get(item.after)
            if body is None:
                replies[item.index] = None
                answered[item.index].set()
                continue
            sent[item.index] = body
            try:
                replies[item.index] = await senders.send(item.channel, item.tag, body,
                                                         item.key)
            except Exception as e:  # no answer at all: a finding, reported with the others
                replies[item.index] = Reply(item.channel, False, "no-answer", repr(e))
            answered[item.index].set()

    await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    return replies


# --------------------------------------------------------------------------- the platform


async def wait_for_operation(app: KernelApplication, reply: Reply, timeout: float = 60) -> None:
    """Until the reply's operation succeeded (a step of the preparation)."""
    assert reply.ok and reply.operation_id, reply
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op: Operation = await asyncio.to_thread(app.repository.get,
                                                uuid.UUID(reply.operation_id))
        if op.is_finished:
            assert op.state.value == "Succeeded", (op.kind, op.state, op.failure)
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"operation {reply.operation_id} did not end")


async def prepare(senders: Senders, app: KernelApplication) -> Ids:
    """Download the template and make a network (through the intake, then the API)."""
    [template], [store] = ids_of(app, "template.Registered"), ids_of(app, "image_store.Added")
    [zone], [offering] = ids_of(app, "zone.Created"), ids_of(app, "service_offering.Created")
    await wait_for_operation(app, await senders.send("intake", "template.download", {
        "template_id": str(template), "image_store_id": str(store)}, "prep-download"))
    created = await senders.send("intake", "network.create", {
        "zone_id": str(zone), "name": "guests", "cidr": "10.1.1.0/24",
        "reserved_ranges": [["10.1.1.1", "10.1.1.8"]]}, "prep-network")
    await wait_for_operation(app, created)
    network = created.result["network_id"]
    await wait_for_operation(app, await senders.send(
        "api", "network.implement", {"network_id": network}, "prep-implement"))
    return Ids(str(zone), str(offering), str(template), network)


@pytest.fixture
def roomy_pg() -> Iterator[tuple[str, PostgresServer | None]]:
    """A fresh database on a private PostgreSQL that takes 400 connections, and that server
    (a test may crash it): the processes hold over 100 connections between them, twice that
    with two of each (`api` and `projections run` 4 for each read model), past the default
    max_connections; or a database on the server CLOUDKERNEL_TEST_POSTGRES_DSN names, which
    must have room for them (and no server: it is not crashed)."""
    external = os.environ.get(EXTERNAL_POSTGRES_ENV)
    server = None if external else PostgresServer(settings={"max_connections": "400"})
    admin_dsn = external or server.start()  # type: ignore[union-attr]
    try:
        name = create_database(admin_dsn)
        yield with_dbname(admin_dsn, name), server
        if server is not None:
            server.ensure_running()  # (a test may have crashed it)
        drop_database(admin_dsn, name)
    finally:
        if server is not None:
            server.destroy()


@pytest.fixture(params=["one-node", "cluster"])
def split_platform(request: pytest.FixtureRequest, tmp_path: Path,
                   roomy_pg: tuple[str, PostgresServer | None],
                   libvirt_host_factory: Callable[..., str]) -> Iterator[SplitPlatform]:
    """Migrated store, inventory loaded, an admin key; every process started, then stopped;
    on one nats-server or on a 3-node cluster with R3 streams."""
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=8, memory_mib=16384) for i in range(3)]
    cluster: NatsCluster | None = None
    if request.param == "cluster":
        cluster = request.getfixturevalue("nats_cluster")
        urls, env = tuple(cluster.urls), {"CLOUDKERNEL_NATS_REPLICAS": "3"}
    else:
        urls, env = (request.getfixturevalue("nats_url"),), {}
    dsn, pg_server = roomy_pg
    settings = Settings(store="postgres", postgres_dsn=dsn, nats_urls=urls,
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris, host_cores=8, host_memory_mib=16384,
                                vm_cores=1, vm_memory_mib=1024)
    platform = open_platform(settings)
    try:
        load_inventory_file(platform.commands, inventory)
    finally:
        platform.close()
    keyring = Keyring(tmp_path / "data" / "keys.json")
    key = keyring.create(actor="load-admin", role="admin")
    narrow = keyring.create(actor="narrow-bot", role="integrator", allow=["vm.start"])
    started = start_split_platform(settings, key, SUBSYSTEMS, api_port=free_port(),
                                   logs=tmp_path / "logs", env=env, twice=cluster is not None)
    started.nats_cluster, started.narrow_key = cluster, narrow
    started.pg_server = pg_server
    try:
        yield started
    finally:
        started.stop()


# --------------------------------------------------------------------------- the test


@pytest.mark.timeout(600)
def test_split_processes_under_a_random_overlapping_load(split_platform: SplitPlatform) -> None:
    seed = int(os.environ.get("CLOUDKERNEL_SPLIT_SEED") or random.randrange(2**32))
    count = int(os.environ.get("CLOUDKERNEL_SPLIT_COMMANDS", "200"))
    replay = f"(replay with CLOUDKERNEL_SPLIT_SEED={seed})"
    print(f"split processes: seed {seed}, {count} commands {replay}")
    settings = split_platform.settings
    app = open_application(PlatformApplication, settings)
    killed: list[str] = []
    refused: list[str] = []

    async def scenario() -> tuple[Script, dict[int, Reply | None], float, datetime]:
        senders = await Senders.open(split_platform)
        try:
            ids = await prepare(senders, app)
            script = make_script(seed, ids, count)
            started = time.monotonic()
            replies: dict[int, Reply | None] = {}
            if split_platform.nats_cluster is not None:
                senders.retries = 5
                chaos = asyncio.gather(
                    kill_stream_leaders(split_platform.nats_cluster, lambda: len(replies),
                                        len(script.items), killed),
                    upset_kernels(split_platform, lambda: len(replies), len(script.items),
                                  killed))
            await drive(senders, script, replies)
            if split_platform.nats_cluster is not None:
                await chaos
                killed.append(f"{senders.retried} commands sent again")
            rest = await quiescence(app)
            assert split_platform.narrow_key is not None
            refused.extend(await refusal_findings(senders, app, split_platform.narrow_key))
            return script, replies, time.monotonic() - started, rest
        finally:
            await senders.close()

    script, replies, took, rest = asyncio.run(scenario())
    record(split_platform, script, replies)
    try:
        findings = answers_findings(script, replies) + refused
        findings += platform_findings(app)
        findings += exclusive_findings(app, settings.postgres_dsn)
        findings += asyncio.run(domain_findings(split_platform, app, rest))
        findings += asyncio.run(reality_findings(app, list(settings.nats_urls)))
        findings += asyncio.run(stream_findings(split_platform, app))
        findings += read_model_findings(settings)
        findings += audit_findings(settings)
        operations: list[Operation] = [app.repository.get(i)
                                       for i in ids_of(app, "operation.Accepted")]
        sent = {r.subsystem for op in operations for r in op.runs.values() if r.attempts}
        findings += metrics_findings(split_platform, idle={
            f"worker-{name}" for name in SUBSYSTEMS if name not in sent})
        findings += [f"process died: {d}" for d in split_platform.dead()]
        if split_platform.nats_cluster is not None:
            findings += deposed_findings(split_platform)
        dump_log(app, split_platform.part("kernel").log_path.parent / "log.jsonl")
        ended = Counter(f"{op.kind}:{op.state.value}" for op in operations)
        why = Counter(f"{op.kind}: {op.failure.error_code}: {op.failure.message[:160]}"
                      for op in operations if op.failure is not None)
    finally:
        app.close()
    tally = Counter(f"{item.kind}:{answer_of(replies.get(item.index))}"
                    for item in script.items)
    print(f"split processes: load and quiescence in {took:.1f} s; NATS: "
          f"{'; '.join(killed) or 'one node'}\n  answers: "
          f"{dict(sorted(tally.items()))}\n  operations: {dict(sorted(ended.items()))}\n"
          "  failures:\n" + "".join(f"    {n} x {w}\n" for w, n in why.most_common()))
    logs = split_platform.part("kernel").log_path.parent
    assert not findings, f"{len(findings)} findings {replay}; logs in {logs}:\n" + \
        "\n".join(findings[:60])


async def kill_stream_leaders(cluster: NatsCluster, answered: Callable[[], int],
                              commands: int, killed: list[str]) -> None:
    """Check that every stream is held by three nodes; then, once a third of the commands
    were answered, SIGKILL the node leading EVENTS, and at two thirds the one leading STEPS
    then; each starts again on its data 3 s later."""
    streams = [EVENTS_STREAM, STEPS_STREAM, RESULTS_STREAM]  # (no ACL relay runs here)
    replicas = await cluster.replicas(streams)
    assert replicas == dict.fromkeys(streams, 3), replicas
    for after, stream in ((commands // 3, EVENTS_STREAM), (2 * commands // 3, STEPS_STREAM)):
        while answered() < after:
            await asyncio.sleep(0.1)
        leaders = await cluster.leaders(streams)
        victim = cluster.node(leaders[stream])
        victim.kill()
        killed.append(f"killed {victim.server_name}, leader of "
                      f"{', '.join(s for s, n in leaders.items() if n == victim.server_name)}")
        await asyncio.sleep(3)
        # started from this (the main) thread: a server started from a worker thread would
        # get SIGTERM when that thread ends (PR_SET_PDEATHSIG follows the thread)
        victim.start()
        await cluster.wait_for_jetstream()
        killed.append(f"{victim.server_name} back")


async def upset_kernels(platform: SplitPlatform, answered: Callable[[], int], commands: int,
                        killed: list[str]) -> None:
    """Two kernels share the partitions. At 40% of the answers SIGKILL the first (its
    partitions move to the second within a lease period, the default 5 s) and start it again
    3 s later; at 55% SIGKILL the first relay, projection runner, intake, API, planner worker
    and network guru worker, and start them again 2 s later; at 65% crash PostgreSQL (every
    process loses its sessions) and start it again a second later; at 70% SIGKILL the workers
    that hold the test-driver hosts (hypervisor, storage, network element, snapshot: their
    hosts come back from what they wrote through) and start them again 2 s later; at 75%
    freeze the second
    kernel (SIGSTOP) for two lease periods, long enough for the first to take its
    partitions, then resume it (SIGCONT): it must find itself deposed and write nothing for
    the partitions it lost (`deposed_findings`)."""
    first, second = platform.part("kernel"), platform.part("kernel-2")
    while answered() < commands * 2 // 5:
        await asyncio.sleep(0.1)
    first.kill()
    killed.append("killed kernel (SIGKILL)")
    await asyncio.sleep(3)
    await asyncio.to_thread(first.restart, time.monotonic() + 60)
    killed.append("kernel back")
    # one of each edge process dies at once: the retrying client goes through the other
    # intake or API; the relay and the projections carry on from what they recorded
    while answered() < commands * 11 // 20:
        await asyncio.sleep(0.1)
    names = ("relay", "projections", "intake", "api", "worker-planner", "worker-networkguru")
    await kill_and_restart([platform.part(name) for name in names], killed)
    while answered() < commands * 13 // 20:
        await asyncio.sleep(0.1)
    if platform.pg_server is not None:  # its own server: crash it, as -m immediate does
        platform.pg_server.kill()
        killed.append("PostgreSQL crashed (SIGKILL)")
        await asyncio.sleep(1)
        await asyncio.to_thread(platform.pg_server.start)
        killed.append("PostgreSQL back")
    while answered() < commands * 7 // 10:
        await asyncio.sleep(0.1)
    # the workers that hold the test-driver hosts: what they reported is on disk (written
    # through before each outcome), what they had not reported comes to the next one again
    await kill_and_restart([platform.part(f"worker-{name}") for name in HOST_HOLDERS], killed)
    while answered() < commands * 3 // 4:
        await asyncio.sleep(0.1)
    second.pause()
    killed.append("froze kernel-2 (SIGSTOP) for 10 s")
    await asyncio.sleep(10)
    second.resume()
    killed.append("kernel-2 resumed")


async def kill_and_restart(parts: list[Part], killed: list[str]) -> None:
    """SIGKILL these processes at once, and start them again 2 s later."""
    for part in parts:
        part.kill()
    killed.append(f"killed {', '.join(p.name for p in parts)} (SIGKILL)")
    await asyncio.sleep(2)
    for part in parts:
        await asyncio.to_thread(part.restart, time.monotonic() + 60)
    killed.append("they are back")


def deposed_findings(platform: SplitPlatform) -> list[str]:
    """The frozen kernel learned on resuming that its partitions had moved; a write it
    tried for them was fenced, never saved (every other invariant checks nothing doubled)."""
    resumed = platform.part("kernel-2")
    if not resumed.grep("were taken by another kernel", "no longer worked here"):
        return [f"kernel-2 was frozen past its leases and never found them lost:\n"
                f"{resumed.tail()}"]
    return []


def answer_of(reply: Reply | None) -> str:
    """accepted, the refusal's code, or skipped (not sent)."""
    return "skipped" if reply is None else "accepted" if reply.ok else reply.code


def record(platform: SplitPlatform, script: Script, replies: dict[int, Reply | None]) -> None:
    """Write the script and its answers beside the processes' logs (`load.jsonl`)."""
    path = platform.part("kernel").log_path.parent / "load.jsonl"
    with path.open("w") as out:
        for item in script.items:
            reply = replies.get(item.index)
            out.write(json.dumps({**dataclasses.asdict(item), "reply": reply and
                                  dataclasses.asdict(reply)}, default=str) + "\n")


async def quiescence(app: KernelApplication) -> datetime:
    """Until every operation in the log ended (or QUIESCENCE_SECONDS passed); the moment."""
    deadline = time.monotonic() + QUIESCENCE_SECONDS
    while time.monotonic() < deadline:
        if not await asyncio.to_thread(unfinished, app):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)  # what an ending just released: the last steps' answers
    return datetime.now(UTC)


# --------------------------------------------------------------------------- answers


def answers_findings(script: Script, replies: dict[int, Reply | None]) -> list[str]:
    """No internal error or missing answer; a refusal is one a lost race explains; a
    command sent again with its key got its first answer."""
    found = []
    for item in script.items:
        reply = replies.get(item.index)
        if reply is None or reply.ok:
            if reply is not None and item.kind == "same_key":
                first = replies[item.after]  # type: ignore[index]
                if first is not None and first.ok and (
                        not reply.replayed or reply.operation_id != first.operation_id):
                    found.append(f"#{item.index} {item.tag} again with its key through "
                                 f"{reply.channel}: not the first answer ({reply} vs {first})")
            continue
        if reply.code not in REFUSALS and reply.code != "entity_busy":
            found.append(f"#{item.index} {item.kind} through {reply.channel}: "
                         f"{reply.code}: {reply.message[:300]}")
    return found



"""PROOF.md's invariants, checked at quiescence on a platform that runs as processes: each
check returns its findings (empty when it holds) so that a test reports them all at once.

* 1: every operation ended, no entity queue held or waited for; no VM, volume or snapshot
  left in a transition (`platform_findings`); and, all along, no operation ran a step on an
  entity it did not hold (`exclusive_findings`);
* 2: each host's claims are exactly the resources of the VMs running there, nothing
  negative; no pool claims a volume twice, one that is gone, or at another size; each public
  address held has one live allocation and the reverse (`platform_findings`);
* 3: each Running VM's domain runs once, on its host, and no other domain exists, as the
  hypervisor worker reports its hosts (`domain_findings`: the test driver's state lives in
  that process); and no domain, volume, file, libvirt network or DHCP entry belongs to no
  entity, and each host's claims are what runs there, as the workers list their hosts
  (`reality_findings`, the check of `cloudkernel audit reality`);
* 4: the EVENTS stream holds the log's events in order, once each (`stream_findings`);
* 5: no projection lags, and every read model equals a replay (`read_model_findings`).
"""

import asyncio
import itertools
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import psycopg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError
from psycopg import sql

from aggregates.entity_queue import EntityQueue
from aggregates.host import Host
from aggregates.operation import Operation
from aggregates.public_address import AddressState, PublicAddress
from aggregates.public_address_pool import PublicAddressPool
from aggregates.snapshot import Snapshot, SnapshotState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from gateways.access import ApiKey
from gateways.audit.reality import check_reality
from gateways.stream.observer import OBSERVATIONS_SUBJECT
from kernel.contracts.events import EVENTS_STREAM, ORIGINATOR_ID, ORIGINATOR_VERSION, POSITION
from kernel.settings import Settings
from kernel.steps.hypervisor import PowerReport
from kernel.store.application import KernelApplication

from .split_platform import CLI, Senders, SplitPlatform, process_env

TERMINAL = ("operation.Succeeded", "operation.RolledBack", "operation.Failed",
            "operation.Cancelled")
STEADY_VM = {VmState.RUNNING, VmState.STOPPED, VmState.DESTROYED, VmState.EXPUNGED,
             VmState.ERROR}
STEADY_VOLUME = {VolumeState.ALLOCATED, VolumeState.READY, VolumeState.DESTROY,
                 VolumeState.EXPUNGED}
STEADY_SNAPSHOT = {SnapshotState.CREATED_ON_PRIMARY, SnapshotState.BACKED_UP,
                   SnapshotState.DESTROYED, SnapshotState.ERROR}


def ids_of(app: KernelApplication, topic: str) -> list[uuid.UUID]:
    """Every aggregate id the log shows with this topic, once each, in log order."""
    found: dict[uuid.UUID, None] = {}
    start: int | None = None
    while True:
        notes = app.recorder.select_notifications(start=start, limit=5000, topics=(topic,),
                                                  inclusive_of_start=start is None)
        for note in notes:
            found[uuid.UUID(str(note.originator_id))] = None
        if len(notes) < 5000:
            return list(found)
        start = notes[-1].id


def unfinished(app: KernelApplication) -> list[uuid.UUID]:
    """The operations the log shows accepted and not ended."""
    ended = set(ids_of(app, TERMINAL[0]))
    for topic in TERMINAL[1:]:
        ended |= set(ids_of(app, topic))
    return [op for op in ids_of(app, "operation.Accepted") if op not in ended]


def dump_log(app: KernelApplication, path: Path) -> None:
    """Write every event of the log, a line each (`log.jsonl`), to read after a failure."""
    with path.open("w") as out:
        start = 0
        while notes := app.recorder.select_notifications(start=start, limit=5000,
                                                         inclusive_of_start=False):
            for n in notes:
                out.write(json.dumps({"position": n.id, "topic": n.topic,
                                      "id": str(n.originator_id),
                                      "version": n.originator_version,
                                      "state": n.state.decode(errors="replace")}) + "\n")
            start = notes[-1].id


def platform_findings(app: KernelApplication) -> list[str]:
    """PROOF.md 1 and 2, on the aggregates as the log has them now."""
    get = app.repository.get
    found = []
    for op_id in unfinished(app):
        op: Operation = get(op_id)
        found.append(f"operation {op.kind} {op.id} still {op.state.value} (waiting on "
                     f"{op.waiting_on}, entities {[str(e) for e in op.entity_ids]})")
    for queue_id in ids_of(app, "entity_queue.Opened"):
        queue: EntityQueue = get(queue_id)
        if queue.owner is not None or queue.waiting:
            owner = get(queue.owner) if queue.owner else None
            found.append(f"entity {queue.entity_id} held by {queue.owner} "
                         f"({owner.kind + ' ' + owner.state.value if owner else '-'}), "
                         f"waited for by {[str(w) for w in queue.waiting]}")
    vms: dict[uuid.UUID, VirtualMachine] = {i: get(i) for i in ids_of(app, "vm.Allocated")}
    volumes: dict[uuid.UUID, Volume] = {i: get(i) for i in ids_of(app, "volume.Allocated")}
    for vm in vms.values():
        if vm.state not in STEADY_VM:
            found.append(f"vm {vm.name} left {vm.state.value}")
        for device, volume_id in vm.disks.items():
            volume = volumes.get(volume_id)
            if volume is None or volume.vm_id != vm.id:
                found.append(f"vm {vm.name} lists disk {device} {volume_id}, attached to "
                             f"{volume and volume.vm_id}")
    for volume in volumes.values():
        if volume.state not in STEADY_VOLUME:
            found.append(f"volume {volume.name} left {volume.state.value}")
        if volume.vm_id is not None and volume.state is not VolumeState.EXPUNGED:
            holder = vms.get(volume.vm_id)
            if holder is None or volume.id not in holder.disks.values():
                found.append(f"volume {volume.name} attached to {volume.vm_id}, which does "
                             "not list it")
    for snap_id in ids_of(app, "snapshot.Allocated"):
        snapshot: Snapshot = get(snap_id)
        if snapshot.state not in STEADY_SNAPSHOT:
            found.append(f"snapshot {snapshot.id} left {snapshot.state.value}")
    for host_id in ids_of(app, "host.Registered"):
        host: Host = get(host_id)
        cpu = sum(c[1] for c in host.claims.values())
        memory = sum(c[2] for c in host.claims.values())
        if (host.used_cpu_cores, host.used_memory_mib) != (cpu, memory) or cpu < 0 \
                or host.used_cpu_cores > host.total_cpu_cores:
            found.append(f"host {host.name}: used {host.used_cpu_cores} cores "
                         f"{host.used_memory_mib} MiB, claims {cpu} cores {memory} MiB")
        claimed = Counter(vm_id for vm_id, _cpu, _mem in host.claims.values())
        for vm_id, times in claimed.items():
            vm = vms[vm_id]
            if times > 1 or vm.host_id != host.id or vm.state is not VmState.RUNNING:
                found.append(f"host {host.name} claims {times}x for vm {vm.name} "
                             f"({vm.state.value} on {vm.host_id})")
        for vm in vms.values():
            if vm.state is VmState.RUNNING and vm.host_id == host.id and vm.id not in claimed:
                found.append(f"vm {vm.name} runs on {host.name} without a claim")
    pool_claims: Counter[uuid.UUID] = Counter()
    for pool_id in ids_of(app, "storage_pool.Created"):
        pool: PrimaryStoragePool = get(pool_id)
        if pool.used_bytes != sum(c[1] for c in pool.claims.values()) or pool.used_bytes < 0:
            found.append(f"pool {pool.name}: used {pool.used_bytes}, claims {pool.claims}")
        for volume_id, size in pool.claims.values():
            pool_claims[volume_id] += 1
            volume = volumes.get(volume_id)
            if volume is None or volume.state is VolumeState.EXPUNGED \
                    or volume.pool_id != pool.id or volume.size_bytes != size:
                found.append(f"pool {pool.name} claims {size} bytes for volume {volume_id}: "
                             f"{volume and (volume.name, volume.state.value, volume.size_bytes)}")
    found += [f"volume {v} claimed {n} times" for v, n in pool_claims.items() if n > 1]
    return found + address_findings(app)


def address_findings(app: KernelApplication) -> list[str]:
    """PROOF.md 2 for public addresses: each address a zone's pool holds has one live
    allocation that names it, and each live allocation's address is held by it."""
    get = app.repository.get
    found = []
    live: dict[uuid.UUID, PublicAddress] = {}
    for address_id in ids_of(app, PublicAddress.Allocated.TOPIC):
        allocation: PublicAddress = get(address_id)
        if allocation.state is AddressState.ALLOCATED:
            live[address_id] = allocation
    held: set[uuid.UUID] = set()
    for pool_id in ids_of(app, PublicAddressPool.Created.TOPIC):
        address_pool: PublicAddressPool = get(pool_id)
        for address_id in address_pool.addresses:
            held.add(address_id)
            owner = live.get(address_id)
            if owner is None or owner.pool_id != pool_id or \
                    owner.address != address_pool.address_of(address_id):
                found.append(f"zone {address_pool.zone_id} holds "
                             f"{address_pool.address_of(address_id)} for {address_id}, "
                             f"which is {owner and owner.address}")
    found += [f"public address {a.address} ({a.id}) of {a.account} is held by no pool"
              for a in live.values() if a.id not in held]
    return found


async def domain_findings(platform: SplitPlatform, app: KernelApplication,
                          since: datetime) -> list[str]:
    """PROOF.md 3, as the hypervisor worker reports its hosts (their test-driver state lives
    in that process): each Running VM's domain runs once, on its host; no other domain."""
    hosts: list[Host] = [app.repository.get(i) for i in ids_of(app, "host.Registered")]
    reports: dict[str, PowerReport] = {}
    decode = msgspec.json.Decoder(PowerReport).decode
    nc = await nats.connect(list(platform.settings.nats_urls))
    try:
        sub = await nc.subscribe(OBSERVATIONS_SUBJECT)
        deadline = time.monotonic() + 20
        while len(reports) < len(hosts) and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=max(0.1, deadline - time.monotonic()))
            except (TimeoutError, nats.errors.TimeoutError):
                break
            report = decode(msg.data)
            if report.observed_at is not None and report.observed_at > since:
                reports[report.host_uri] = report
    finally:
        await nc.close()
    found = [f"host {h.name} not reported since {since}" for h in hosts
             if h.uri not in reports]
    vms: list[VirtualMachine] = [app.repository.get(i) for i in ids_of(app, "vm.Allocated")]
    running = {vm.id: vm for vm in vms if vm.state is VmState.RUNNING}
    seen: Counter[uuid.UUID] = Counter()
    for host in hosts:
        for domain in reports.get(host.uri, PowerReport(host_uri=host.uri, domains=())).domains:
            seen[domain.uuid] += 1
            vm = running.get(domain.uuid)
            if vm is None or vm.host_id != host.id or domain.state != "running":
                owner = "no Running VM" if vm is None else f"vm {vm.name} on {vm.host_id}"
                found.append(f"host {host.name} has domain {domain.name} ({domain.state}): "
                             f"{owner}")
    found += [f"vm {vm.name} Running with {seen[vm.id]} domains" for vm in running.values()
              if seen[vm.id] != 1 and reports]
    return found


async def reality_findings(app: KernelApplication, servers: list[str],
                           expected: tuple[tuple[str, str], ...] = (), *,
                           settle: float = 30.0) -> list[str]:
    """PROOF.md 3 as `cloudkernel audit reality` checks it, once every operation ended (at
    most `settle` seconds): each difference found, except those `expected` declares as
    `(kind, text in its subject or detail)`; an expectation that matches nothing is a finding
    too, so that a declared drift cannot outlive the drift."""
    deadline = time.monotonic() + settle
    while await asyncio.to_thread(unfinished, app) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    report = await check_reality(app, servers)
    found = []
    for difference in report.differences:
        if not any(_matches(difference, e) for e in expected):
            found.append(f"reality: {difference}")
    for kind, text in expected:
        if not any(_matches(d, (kind, text)) for d in report.differences):
            found.append(f"reality: expected difference {kind} {text!r} not found")
    return found


def _matches(difference: Any, expected: tuple[str, str]) -> bool:
    kind, text = expected
    return bool(difference.kind == kind and (text in difference.subject
                                              or text in difference.detail))


async def stream_findings(platform: SplitPlatform, app: KernelApplication) -> list[str]:
    """PROOF.md 4: EVENTS holds the log's events, in order, once each (up to the log's head
    as read here: the reconciler may still write what the hosts' reports say)."""
    log: list[tuple[int, str, int]] = []
    start = 0
    while True:
        notes = app.recorder.select_notifications(start=start, limit=5000,
                                                  inclusive_of_start=False)
        log += [(n.id, str(n.originator_id), n.originator_version) for n in notes]
        if len(notes) < 5000:
            break
        start = notes[-1].id
    nc = await nats.connect(list(platform.settings.nats_urls))
    stream: list[tuple[int, str, int]] = []
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 30
        while (held := (await js.stream_info(EVENTS_STREAM)).state.messages) < len(log) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        deadline = time.monotonic() + 60
        while True:  # a cluster that just lost a node elects leaders again for a while
            try:
                sub = await js.pull_subscribe(
                    "cloudkernel.events.>", stream=EVENTS_STREAM,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL,
                                          ack_policy=AckPolicy.NONE))
                break
            except (ServiceUnavailableError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        while len(stream) < held:
            try:
                batch = await sub.fetch(min(1000, held - len(stream)), timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                break  # fewer than the stream said: the comparison below tells
            except ServiceUnavailableError:  # a cluster still settling answers 503 a while
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
                continue
            for msg in batch:
                h = msg.headers or {}
                stream.append((int(h[POSITION]), h[ORIGINATOR_ID], int(h[ORIGINATOR_VERSION])))
    finally:
        await nc.close()
    stream = [e for e in stream if e[0] <= log[-1][0]]
    if stream == log:
        return []
    first = next((i for i, (a, b) in enumerate(zip(stream, log, strict=False)) if a != b),
                 min(len(stream), len(log)))
    return [f"EVENTS holds {len(stream)} events, the log {len(log)}; first difference at "
            f"#{first}: {stream[first:first + 2]} vs {log[first:first + 2]}"]


def read_model_findings(settings: Settings) -> list[str]:
    """PROOF.md 5: no projection lags, and each read model equals a replay of the log."""
    env = process_env(settings)
    deadline = time.monotonic() + 30
    while True:
        status = subprocess.run([*CLI, "projections", "status", "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
        lagging = [p["name"] for p in msgspec.json.decode(status.stdout)
                   if p["lag_positions"]] if status.returncode == 0 else ["?"]
        if not lagging or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    found = [f"projections lag: {lagging} {status.stderr[-500:]}"] if lagging else []
    replay = subprocess.run([*CLI, "audit", "replay"], env=env, capture_output=True,
                            text=True, timeout=120)
    if replay.returncode != 0:
        found.append(f"audit replay exit {replay.returncode}:\n{replay.stdout[-2000:]}"
                     f"{replay.stderr[-1000:]}")
    return found


ACTIVITY = ("operation.StepDispatched", "operation.StepSucceeded", "operation.StepAttemptFailed")


def exclusive_findings(app: KernelApplication, dsn: str) -> list[str]:
    """An operation's steps were dispatched and answered only while it held every entity it
    names (the entity queues' whole point), transaction by transaction: PostgreSQL's xmin
    groups the log's rows by the transaction that wrote them, in commit order."""
    recorder: Any = app.recorder
    table = sql.Identifier(recorder.datastore.schema, recorder.events_table_name)
    query = sql.SQL("SELECT xmin::text, topic, originator_id, state FROM {} "
                    "ORDER BY notification_id").format(table)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(query).fetchall()
    entity_of: dict[str, str] = {}  # queue id -> entity id
    owner: dict[str, str | None] = {}  # entity id -> operation holding it
    entities: dict[str, set[str]] = {}  # operation id -> the entities it names
    found: list[str] = []
    for _xid, txn in itertools.groupby(rows, key=lambda r: r[0]):
        events = [(topic, str(oid), msgspec.json.decode(bytes(state))) for _x, topic, oid, state
                  in txn]
        taken: set[tuple[str, str]] = set()  # (entity, operation) taken in this transaction
        for topic, oid, state in events:
            if topic == "operation.Accepted" or (topic == "operation.Replanned" \
                    and state.get("entity_ids")):
                entities[oid] = set(state["entity_ids"])
            elif topic == "entity_queue.Opened":
                entity_of[oid] = state["entity_id"]
                if state.get("owner"):
                    taken.add((state["entity_id"], state["owner"]))
            elif topic == "entity_queue.Acquired":
                taken.add((entity_of[oid], state["operation_id"]))
            elif topic == "entity_queue.Released" and state.get("next_owner"):
                taken.add((entity_of[oid], state["next_owner"]))
        for topic, oid, _state in events:
            if topic not in ACTIVITY:
                continue
            for entity in sorted(entities.get(oid, ())):
                if owner.get(entity) != oid and (entity, oid) not in taken:
                    found.append(f"operation {oid} ran ({topic}) on entity {entity}, held by "
                                 f"{owner.get(entity)}")
        for topic, oid, state in events:  # the queues as the transaction left them
            if topic == "entity_queue.Opened":
                owner[state["entity_id"]] = state.get("owner")
            elif topic == "entity_queue.Acquired":
                owner[entity_of[oid]] = state["operation_id"]
            elif topic == "entity_queue.Released":
                owner[entity_of[oid]] = state.get("next_owner")
    return sorted(set(found))


def audit_findings(settings: Settings) -> list[str]:
    """PROOF.md 6: the log, sealed into signed checkpoints (`audit keygen`, `audit seal`),
    verifies against them (`audit verify`)."""
    env = process_env(settings)
    for args in (["audit", "keygen"], ["audit", "seal", "--every", "500"],
                 ["audit", "verify"]):
        run = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                             timeout=300, cwd=settings.data_dir)
        if run.returncode != 0:
            return [f"cloudkernel {' '.join(args)} exited {run.returncode}: "
                    f"{run.stdout[-800:]} {run.stderr[-800:]}"]
    return []


def _denials(settings: Settings) -> int:
    from services.acl.model import AccessDenial
    from services.acl.service import AclService

    acl = AclService.open(settings)
    try:
        return sum(1 for n in acl.app.recorder.select_notifications(
            start=1, limit=1_000_000, topics=(AccessDenial.AccessDenied.TOPIC,)))
    finally:
        acl.close()


async def refusal_findings(senders: Senders, app: KernelApplication,
                           narrow: ApiKey) -> list[str]:
    """PROOF.md 7, at quiescence: refused requests through both channels (a forged signature
    under the admin's key id, a made-up key id, a command the `narrow` key may not send, a
    body that is not JSON) move no log head (but for what the reconciler observes meanwhile),
    and each refusal of credentials or of a command is an AccessDenied event in the ACL log
    (one a second per key: they are spaced)."""
    settings = senders.platform.settings
    head = app.recorder.max_notification_id()
    denied = await asyncio.to_thread(_denials, settings)
    forged = msgspec.structs.replace(senders.platform.key, secret="0" * 64)
    made_up = msgspec.structs.replace(senders.platform.key, id="ck_00000000deadbeef")
    cases: list[tuple[str, dict[str, Any] | bytes, ApiKey, str, bool]] = [
        ("vm.stop", {"vm_id": str(uuid.uuid4())}, forged, "unauthenticated", True),
        ("vm.stop", {"vm_id": str(uuid.uuid4())}, made_up, "unauthenticated", True),
        ("vm.stop", {"vm_id": str(uuid.uuid4())}, narrow, "forbidden", True),
        ("vm.stop", b"{not json", senders.platform.key, "malformed", False),
    ]
    found, audited = [], 0
    for channel in ("intake", "api"):
        for i, (tag, body, key, code, audit) in enumerate(cases):
            reply = await senders.send(channel, tag, body, f"refused-{channel}-{i}", key=key)
            if reply.ok or reply.code != code:
                found.append(f"{channel}: {tag} with key {key.id} ({code} expected): {reply}")
            audited += audit
        await asyncio.sleep(1.2)  # the next channel's refusals are not rate-limited away
    # the reconciler may still record what the hosts report (actor "system", caused by no
    # command); anything else written since is a refused request's doing
    moved = [f"{n.topic} by {json.loads(n.state).get('actor')}"
             for n in app.recorder.select_notifications(start=head or 0, limit=10_000,
                                                        inclusive_of_start=False)
             if json.loads(n.state).get("actor") != "system" or n.topic.startswith("operation.")]
    if moved:
        found.append(f"refused requests moved the log head past {head}: {moved[:10]}")
    now = await asyncio.to_thread(_denials, settings)
    if now - denied != audited:
        found.append(f"{audited} refusals of credentials or commands, {now - denied} "
                     "AccessDenied events in the ACL log")
    return found


# the family each kind of process must serve, with a sample that moved under the load
_METRICS = {"kernel": "cloudkernel_kernel_published_total",
            "relay": "cloudkernel_relay_events_published_total",
            "projections": "cloudkernel_projection_lag_positions",
            "intake": "cloudkernel_intake_requests_total",
            "api": "cloudkernel_http_requests_total",
            "worker": "cloudkernel_worker_steps_total"}


def metrics_findings(platform: SplitPlatform, idle: Collection[str] = ()) -> list[str]:
    """Every process serves Prometheus metrics on its own port: its kind's family is there
    (with a sample above zero where the load must have moved it: not in the `idle` parts,
    a worker whose subsystem got no step, say, nor in a part killed and started again, whose
    counters began again late in the load) beside prometheus-client's process
    collectors."""
    found = []
    for part in platform.parts:
        kind = part.name.split("-")[0]
        try:
            text = part.metrics()
        except OSError as e:
            found.append(f"{part.name}: no /metrics on port {part.metrics_port}: {e}")
            continue
        family = _METRICS[kind]
        samples = [line for line in text.splitlines() if line.startswith(family)]
        if f"# TYPE {family}" not in text or "process_cpu_seconds_total" not in text:
            found.append(f"{part.name}: /metrics lacks {family}: {text[:300]!r}")
        elif kind != "projections" and part.name not in idle and not part.kills \
                and not any(float(s.rsplit(" ", 1)[1]) > 0 for s in samples):
            found.append(f"{part.name}: {family} never moved: {samples}")
    return found

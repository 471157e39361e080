"""Liveness of services: heartbeats in a NATS KV bucket whose entries expire.

Each running instance of a service puts its heartbeat under `<name>.<instance_id>` in the
bucket `CK_SERVICES` every `heartbeat_seconds`. The bucket's TTL is three heartbeats, so an
instance that stops heartbeating (killed, hung, cut off) disappears on its own, with nobody
to clean up after it. A clean stop deletes its key at once.
"""

import contextlib
import time
from collections.abc import Mapping, Sequence

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

BUCKET = "CK_SERVICES"
HEARTBEATS_PER_TTL = 3


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """One instance's heartbeat: who it is, where it listens, and when it last said so."""

    name: str
    instance_id: str
    version: str
    endpoints: Mapping[str, str]
    pid: int
    host: str
    started_at: float  # unix seconds
    at: float  # unix seconds of this heartbeat
    enabled: bool

    @property
    def key(self) -> str:
        """Its key in the bucket."""
        return instance_key(self.name, self.instance_id)

    def age(self, now: float | None = None) -> float:
        """Seconds since this heartbeat."""
        return max(0.0, (time.time() if now is None else now) - self.at)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Heartbeat).decode


def instance_key(name: str, instance_id: str) -> str:
    """`<name>.<instance_id>`: the instances of one service share the prefix `<name>.`."""
    return f"{name}.{instance_id}"


async def open_bucket(js: JetStreamContext, heartbeat_seconds: float,
                      bucket: str = BUCKET, *, replicas: int = 1) -> KeyValue:
    """The liveness bucket, created with a TTL of three heartbeats unless it exists, on
    `replicas` nodes of a NATS cluster (a heartbeat outlives a node's loss)."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(KeyValueConfig(
            bucket=bucket, ttl=HEARTBEATS_PER_TTL * heartbeat_seconds, history=1,
            storage=StorageType.MEMORY, replicas=replicas,
            description="cloudkernel services: one heartbeat per live instance"))
    except Exception:
        # Another instance created it meanwhile (with its own settings): use that one.
        return await js.key_value(bucket)


async def beat(kv: KeyValue, heartbeat: Heartbeat) -> None:
    """Put one heartbeat (renews the entry's TTL)."""
    await kv.put(heartbeat.key, _encode(heartbeat))


async def forget(kv: KeyValue, name: str, instance_id: str) -> None:
    """Remove an instance at once (a clean stop)."""
    with contextlib.suppress(Exception):
        await kv.purge(instance_key(name, instance_id))


async def live_instances(js: JetStreamContext, name: str | None = None,
                         bucket: str = BUCKET) -> list[Heartbeat]:
    """The instances heartbeating now (of one service, or of all), by name then start time."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        return []
    watcher = await kv.watch(f"{name}.>" if name else ">", ignore_deletes=True)
    found: list[Heartbeat] = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of what the bucket holds now
                break
            if entry.value:
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    found.append(_decode(entry.value))
    finally:
        await watcher.stop()
    return sorted(found, key=lambda h: (h.name, h.started_at, h.instance_id))


def by_service(instances: Sequence[Heartbeat]) -> dict[str, list[Heartbeat]]:
    """Instances grouped by service name."""
    out: dict[str, list[Heartbeat]] = {}
    for h in instances:
        out.setdefault(h.name, []).append(h)
    return out

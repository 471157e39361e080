"""The sealing follower's async edge: seal new events as they come, publish each checkpoint.

`cloudkernel audit seal --follow` runs it alone; `cloudkernel up` runs it beside the kernel
with the key in `<data_dir>/audit`, so the platform seals its log from its first start. The
sealer itself is synchronous and runs in a thread; checkpoints are stored in the
JetStream stream AUDIT_CHECKPOINTS (subject `cloudkernel.audit.checkpoints`), so a copy lives
outside the database and its host, readable later by anyone who keeps watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from gateways.audit.seal import SUBJECT, Checkpoint, Sealer

STREAM = "AUDIT_CHECKPOINTS"

log = logging.getLogger(__name__)


class SealFollower:
    """Runs `sealer.seal_available` every `poll` seconds until stopped; publishes what it made."""

    def __init__(self, sealer: Sealer, servers: Sequence[str] = (), *, poll: float = 1.0,
                 publish: bool = True, replicas: int = 1) -> None:
        """`servers` empty or `publish` false: checkpoints are only kept in the audit folder."""
        self.sealer, self.servers, self.poll = sealer, list(servers), poll
        self.replicas = replicas
        self.publish = publish and bool(self.servers)
        self.made: list[Checkpoint] = []
        self.published = 0
        self.failing = False
        sealer.on_checkpoint = self.made.append

    async def run(self, stop: asyncio.Event) -> None:
        """Seal and publish until `stop` is set, then checkpoint what is pending; a checkpoint
        NATS did not take is sent at the next poll."""
        nc: Any = None
        try:
            while not stop.is_set():
                await asyncio.to_thread(self.sealer.seal_available)
                if self.publish and len(self.made) > self.published:
                    nc = await self._publish(nc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.poll)
            # a clean stop seals what is pending, so the next verify covers all of it
            await asyncio.to_thread(self.sealer.seal_available)
            if self.sealer.pending:
                await asyncio.to_thread(self.sealer.checkpoint)
            if self.publish and len(self.made) > self.published:
                nc = await self._publish(nc)
        finally:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5)

    async def _publish(self, nc: Any) -> Any:
        """Publish the checkpoints not sent yet; NATS being away only delays them."""
        import nats

        try:
            if nc is None or nc.is_closed:
                nc = await nats.connect(servers=self.servers, connect_timeout=2,
                                        max_reconnect_attempts=-1)
            await publish_checkpoints(nc, self.made[self.published:], replicas=self.replicas)
            self.published, self.failing = len(self.made), False
        except Exception as e:  # retried at the next poll; said once, not every poll
            (log.debug if self.failing else log.warning)(
                "audit: could not publish %d checkpoints on NATS (%s); kept in %s, retrying",
                len(self.made) - self.published, e, self.sealer.dir)
            self.failing = True
        return nc


async def publish_checkpoints(nc: Any, checkpoints: Sequence[Checkpoint], *,
                              replicas: int = 1) -> None:
    """Store checkpoints in the JetStream stream AUDIT_CHECKPOINTS (created if missing), so
    the copy outside the database outlives any subscriber: one message per tree size
    (`Nats-Msg-Id`), so publishing one again stores nothing twice."""
    from nats.js.api import StorageType, StreamConfig

    from gateways.stream.streams import ensure_stream

    js = nc.jetstream()
    await ensure_stream(js, StreamConfig(name=STREAM, subjects=[SUBJECT],
                                         storage=StorageType.FILE,
                                         duplicate_window=24 * 3600.0, num_replicas=replicas))
    for cp in checkpoints:
        await js.publish(SUBJECT, cp.to_json().encode(), stream=STREAM,
                         headers={"Nats-Msg-Id": f"checkpoint-{cp.tree_size}-{cp.root_hash}"})


def platform_follower(app: Any, audit_dir: Any, servers: Sequence[str], *,
                      replicas: int = 1) -> SealFollower:
    """`up`'s follower over the platform log, with the key pair in `audit_dir`; a first start
    generates the pair (the private key stays in that folder, mode 0600, never in the log)."""
    from gateways.audit.keys import PRIVATE_NAME, generate_keys, load_private_key

    if not (audit_dir / PRIVATE_NAME).is_file():
        _, public, kid = generate_keys(audit_dir)
        print(f"audit: created the log's signing key {kid} (public key {public}); "
              f"`cloudkernel audit verify` checks the log against its checkpoints", flush=True)
    sealer = Sealer(app, audit_dir, load_private_key(audit_dir / PRIVATE_NAME), every=1000,
                    interval=10.0)
    return SealFollower(sealer, servers, replicas=replicas)

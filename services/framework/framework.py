"""The Services Framework: `ServiceRuntime` runs one instance of a service against the platform.

It talks to the platform only through NATS: it registers the service with a signed
`service.register` command, heartbeats into the liveness bucket, follows its registration's
public events to know whether an admin enabled or disabled it, runs the service's durable
consumers of the EVENTS stream, and sends commands and waits for their operations.
"""

import asyncio
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from nats.aio.client import Client
from nats.js.kv import KeyValue

from kernel.contracts import liveness
from kernel.contracts.connection import connect, sleep_unless_stopped
from kernel.contracts.services import check_registration, registration_id
from services.framework.consumers import DurableConsumer, Handler, consumer
from services.framework.credentials import ServiceCredentials
from services.framework.following import RegistrationFollower, wait_for_operation
from services.framework.system_vms import ensure_system_vm
from services.framework.wire import (
    UNAVAILABLE,
    CommandRefusedError,
    CommandResult,
    OperationOutcome,
    ServiceEvent,
    send_command,
)

__all__ = ["CommandRefusedError", "CommandResult", "OperationOutcome", "ServiceEvent",
           "ServiceRuntime", "ServiceSpec"]

log = logging.getLogger(__name__)
StateCallback = Callable[[bool], Awaitable[None] | None]


@dataclass(frozen=True)
class ServiceSpec:
    """What a service registers: its name, version, endpoints and the subjects it uses."""

    name: str
    version: str
    endpoints: Mapping[str, str]
    consumes: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        # The platform checks the same; failing here says so before anything connects.
        check_registration(name=self.name, version=self.version, endpoints=self.endpoints,
                           consumes=self.consumes, publishes=self.publishes,
                           description=self.description)

    def body(self) -> dict[str, Any]:
        """The body of its `service.register` command."""
        return {"name": self.name, "version": self.version, "endpoints": dict(self.endpoints),
                "consumes": list(self.consumes), "publishes": list(self.publishes),
                "description": self.description}


@dataclass
class ServiceRuntime:
    """One running instance of a service: registration, heartbeats, consumers and commands."""

    spec: ServiceSpec
    servers: Sequence[str]
    credentials: ServiceCredentials
    data_dir: Path
    heartbeat_seconds: float = 2.0
    replicas: int = 1  # of the liveness bucket, on a NATS cluster
    register_timeout: float = 60.0
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    enabled: bool = field(default=False, init=False)
    registration_state: str = field(default="Unknown", init=False)
    disabled_reason: str = field(default="", init=False)
    enabled_event: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _nc: Client | None = field(default=None, init=False)
    _kv: KeyValue | None = field(default=None, init=False)
    _consumers: list[DurableConsumer] = field(default_factory=list, init=False)
    _callbacks: list[StateCallback] = field(default_factory=list, init=False)
    _tasks: list["asyncio.Task[None]"] = field(default_factory=list, init=False)
    _halt: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _started_at: float = field(default=0.0, init=False)
    _sent_at: dict[UUID, datetime | None] = field(default_factory=dict, init=False)
    _pending: set["asyncio.Future[Any]"] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.registration_id = registration_id(self.spec.name)
        self._follower = RegistrationFollower(self.registration_id, self._on_state)

    # ------------------------------------------------------------------ setup

    @property
    def service_name(self) -> str:
        """The service's name."""
        return self.spec.name

    @property
    def nc(self) -> Client:
        """The NATS connection, once started."""
        if self._nc is None:
            raise RuntimeError("ServiceRuntime.start() first")
        return self._nc

    def consume(self, durable: str, subjects: Sequence[str], handler: Handler) -> None:
        """Before start(): a durable pull consumer of EVENTS on `subjects`; `handler` gets the
        events in log order, each acked after it returns (delivered again if it raised)."""
        if self._nc is not None:
            raise RuntimeError("consume() before start()")
        if any(c.durable == durable for c in self._consumers):
            raise ValueError(f"durable {durable!r} is already consumed by this service")
        self._consumers.append(consumer(durable, subjects, handler))

    def on_state_change(self, callback: StateCallback) -> None:
        """Call `callback(enabled)` whenever the admin's switch flips (and once at start)."""
        self._callbacks.append(callback)

    @property
    def consumers(self) -> tuple[DurableConsumer, ...]:
        """The consumers declared with `consume` (with their counters)."""
        return tuple(self._consumers)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, register (idempotent), heartbeat once and start following the state."""
        self._started_at = time.time()
        self._nc = await connect(self.servers, name=f"cloudkernel-service-{self.spec.name}")
        js = self._nc.jetstream()
        self._kv = await liveness.open_bucket(js, self.heartbeat_seconds,
                                              replicas=self.replicas)
        await self._register()
        await self._beat()
        self._tasks.append(asyncio.create_task(self._follower.run(js, self._halt)))
        log.info("service %s %s (instance %s) registered; %s", self.spec.name,
                 self.spec.version, self.instance_id,
                 "enabled" if self.enabled else self.registration_state.lower())

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat and run the consumers until `stop` is set; then leave and close."""
        if self._nc is None:
            await self.start()
        js = self.nc.jetstream()
        self._tasks += [asyncio.create_task(c.run(js, self._halt)) for c in self._consumers]
        try:
            while not stop.is_set():
                await sleep_unless_stopped(stop, self.heartbeat_seconds)
                if not stop.is_set():
                    await self._beat()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop consumers and following, forget this instance's heartbeat, disconnect."""
        self._halt.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=10)
            for task in pending:  # a handler that never returns: its event is not acked
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._kv is not None:
            await liveness.forget(self._kv, self.spec.name, self.instance_id)
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.close(), 5)
            except Exception as e:
                log.warning("service %s: closing NATS: %s", self.spec.name, e)

    async def _register(self) -> None:
        deadline = time.monotonic() + self.register_timeout
        while True:
            try:
                done = await self.command("service.register", self.spec.body(),
                                          idempotency_key=f"register-{self.instance_id}",
                                          timeout=10)
                break
            except CommandRefusedError as e:
                if e.code != UNAVAILABLE or time.monotonic() > deadline:
                    raise
                log.info("service %s: %s; retrying", self.spec.name, e.message)
                await asyncio.sleep(1)
        self._follower.known(str(done.result["state"]), int(done.result["aggregate_version"]))

    async def _beat(self) -> None:
        if self._kv is None:
            return
        try:
            await liveness.beat(self._kv, liveness.Heartbeat(
                name=self.spec.name, instance_id=self.instance_id, version=self.spec.version,
                endpoints=dict(self.spec.endpoints), pid=os.getpid(),
                host=socket.gethostname(), started_at=self._started_at, at=time.time(),
                enabled=self.enabled))
        except Exception as e:  # NATS away: the next beat tries again
            log.warning("service %s: heartbeat failed (%s: %s)", self.spec.name,
                        type(e).__name__, e)

    def _on_state(self, state: str, reason: str) -> None:
        was = self.enabled
        self.registration_state, self.disabled_reason = state, reason
        self.enabled = state == "Enabled"
        if self.enabled:
            self.enabled_event.set()
        else:
            self.enabled_event.clear()
        if was != self.enabled or state != "Enabled":
            log.info("service %s is now %s%s", self.spec.name, state.lower(),
                     f" ({reason})" if reason else "")
        if self._kv is not None and was != self.enabled:
            asyncio.get_running_loop().create_task(self._beat())  # tell the directory now
        for callback in self._callbacks:
            try:
                outcome = callback(self.enabled)
                if inspect.isawaitable(outcome):
                    self._pending = {t for t in self._pending if not t.done()}
                    self._pending.add(asyncio.ensure_future(outcome))
            except Exception:
                log.exception("service %s: state callback failed", self.spec.name)

    # ------------------------------------------------------------------ commands

    async def command(self, tag: str, body: Mapping[str, Any], *, idempotency_key: str,
                      bearer_token: str | None = None, timeout: float = 30) -> CommandResult:
        """Send a command signed with the service's key (or as the bearer token's user) and
        return the intake's answer; CommandRefusedError if refused or unanswered."""
        sent = datetime.now(UTC)
        result = await send_command(self.nc, tag, body, idempotency_key=idempotency_key,
                                    credentials=self.credentials, bearer_token=bearer_token,
                                    timeout=timeout)
        operation_id = result.result.get("operation_id") \
            if isinstance(result.result, dict) else None
        if operation_id:
            # Its events come after `sent` (less clock skew), unless the command was replayed.
            self._sent_at[UUID(str(operation_id))] = \
                None if result.replayed else sent - timedelta(seconds=60)
        return result

    async def wait_operation(self, operation_id: UUID, timeout: float = 120, *,
                             since: datetime | None = None) -> OperationOutcome:
        """Wait, through the operation's public events, until it ended. The stream is read
        from when this runtime sent the command that started it, else from `since` (e.g.
        the time of an event that named it), else from its start."""
        since = self._sent_at.get(UUID(str(operation_id)), since)
        return await wait_for_operation(self.nc.jetstream(), UUID(str(operation_id)),
                                        timeout=timeout, since=since)

    async def ensure_system_vm(self, name: str, *, zone_id: UUID, template_id: UUID,
                               offering_id: UUID, account: str = "system",
                               network_ids: Sequence[UUID] = (), wait: bool = False,
                               timeout: float = 300) -> UUID:
        """Run a system VM for this service through an ordinary vm.deploy, idempotent by
        name; with `wait`, until its deploy succeeded (RuntimeError if it did not)."""
        return await ensure_system_vm(self, name, zone_id=zone_id, template_id=template_id,
                                      offering_id=offering_id, account=account,
                                      network_ids=network_ids, wait=wait, timeout=timeout)

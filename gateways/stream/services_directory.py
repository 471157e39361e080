"""The Services Directory over NATS: who is registered, and which instances are alive.

Runs in the platform process and answers core NATS requests (JSON bodies):

    cloudkernel.services.list  {}               -> {"ok": true, "services": [S, ...]}
    cloudkernel.services.get   {"name": "ec2"}  -> {"ok": true, "service": S}
    errors: {"ok": false, "error": {"code": "not_found"|"invalid"|"internal", "message": ...}}

S is a registration (name, version, endpoints, consumes, publishes, description, state,
enabled, disabled_reason, registered_at, updated_at, id) joined with `instances`, the
heartbeats alive in the liveness bucket, and `live` (how many there are). Registrations come
from the platform's event store, or from the services read model.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from aggregates.errors import NotFoundError, ValidationError
from aggregates.service import ServiceRegistration
from kernel.contracts.connection import connect
from kernel.contracts.liveness import Heartbeat, by_service, live_instances
from kernel.contracts.services import GET_SUBJECT, LIST_SUBJECT, require_service_name

log = logging.getLogger(__name__)

QUEUE_GROUP = "cloudkernel-directory"
REGISTERED_TOPIC = "service_registration.Registered"
Document = dict[str, Any]


class Registrations(Protocol):
    """Where the directory reads registrations from (blocking calls)."""

    def all(self) -> list[Document]:
        """Every registration, by name."""
        ...

    def get(self, name: str) -> Document | None:
        """The registration of this service, if any."""
        ...


def document(reg: ServiceRegistration) -> Document:
    """A registration as the directory shows it."""
    return {"id": str(reg.id), "name": reg.name, "version": reg.service_version,
            "endpoints": dict(reg.endpoints), "consumes": list(reg.consumes),
            "publishes": list(reg.publishes), "description": reg.description,
            "state": reg.state.value, "enabled": reg.enabled,
            "disabled_reason": reg.disabled_reason,
            "registered_at": _iso(reg.created_on), "updated_at": _iso(reg.modified_on)}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


class StoreRegistrations:
    """Registrations read from the platform's event store (its application)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def _ids(self) -> list[Any]:
        ids, start = [], None
        while True:
            notes = self.app.recorder.select_notifications(
                start=start, limit=1000, topics=(REGISTERED_TOPIC,),
                inclusive_of_start=start is None)
            ids += [n.originator_id for n in notes]
            if len(notes) < 1000:
                return ids
            start = notes[-1].id

    def all(self) -> list[Document]:
        """Every registration, by name."""
        regs = [self.app.repository.get(i) for i in self._ids()]
        return sorted((document(r) for r in regs), key=lambda d: d["name"])

    def get(self, name: str) -> Document | None:
        """The registration of this service, if any."""
        from eventsourcing.application import AggregateNotFoundError

        try:
            reg = self.app.repository.get(ServiceRegistration.create_id(name))
        except AggregateNotFoundError:
            return None
        return document(reg) if isinstance(reg, ServiceRegistration) else None


class ViewRegistrations:
    """Registrations read from the `services` read model."""

    def __init__(self, view: Any) -> None:
        self.view = view

    @staticmethod
    def _doc(row: dict[str, Any]) -> Document:
        doc = {k: _iso(v) for k, v in row.items() if k != "revision"}
        doc["id"] = str(row["id"])
        return doc

    def all(self) -> list[Document]:
        """Every registration, by name."""
        return sorted((self._doc(r) for r in self.view.all_rows()), key=lambda d: d["name"])

    def get(self, name: str) -> Document | None:
        """The registration of this service, if any."""
        row = self.view.get(ServiceRegistration.create_id(name))
        return None if row is None else self._doc(row)


def joined(doc: Document, instances: Sequence[Heartbeat]) -> Document:
    """A registration with its live instances."""
    return {**doc, "live": len(instances),
            "instances": [msgspec.to_builtins(h) for h in instances]}


async def ask_directory(nc: Client, name: str | None = None,
                        timeout: float = 5) -> Any:
    """What the directory answers: every service (no name) or one; NotFoundError,
    ValidationError or RuntimeError for its refusals, TimeoutError when nobody answers."""
    subject, body = (LIST_SUBJECT, {}) if name is None else (GET_SUBJECT, {"name": name})
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    reply = json.loads(msg.data)
    if reply.get("ok"):
        return reply["services"] if name is None else reply["service"]
    error = reply.get("error") or {}
    message = str(error.get("message", "refused"))
    if error.get("code") == "not_found":
        raise NotFoundError(message)
    if error.get("code") == "invalid":
        raise ValidationError(message)
    raise RuntimeError(message)


@dataclass
class DirectoryServer:
    """Answers `cloudkernel.services.list` and `.get` until told to stop."""

    registrations: Registrations
    servers: Sequence[str]
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def list(self, nc: Client) -> list[Document]:
        """Every registration with its live instances."""
        docs = await asyncio.to_thread(self.registrations.all)
        live = by_service(await live_instances(nc.jetstream()))
        return [joined(d, live.get(d["name"], [])) for d in docs]

    async def get(self, nc: Client, name: str) -> Document:
        """One registration with its live instances; NotFoundError if it never registered."""
        require_service_name(name)
        doc = await asyncio.to_thread(self.registrations.get, name)
        if doc is None:
            raise NotFoundError(f"no service {name!r} is registered")
        return joined(doc, await live_instances(nc.jetstream(), name))

    async def answer(self, nc: Client, subject: str, data: bytes) -> dict[str, Any]:
        """The reply to one request; never raises."""
        try:
            body = json.loads(data) if data.strip() else {}
            if not isinstance(body, dict):
                raise ValidationError("the body must be a JSON object")
            if subject == LIST_SUBJECT:
                return {"ok": True, "services": await self.list(nc)}
            name = body.get("name")
            if not isinstance(name, str):
                raise ValidationError('name: give the service\'s name, {"name": "ec2"}')
            return {"ok": True, "service": await self.get(nc, name)}
        except ValidationError as e:
            code, message = "invalid", str(e)
        except ValueError as e:
            code, message = "invalid", f"body is not JSON: {e}"
        except NotFoundError as e:
            code, message = "not_found", str(e)
        except Exception:
            log.exception("directory: %s failed", subject)
            code, message = "internal", "internal error; see the platform's log"
        return {"ok": False, "error": {"code": code, "message": message}}

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set."""
        nc = await connect(self.servers, name="cloudkernel-directory")

        async def on_request(msg: Msg) -> None:
            reply = await self.answer(nc, msg.subject, msg.data)
            if msg.reply:
                with contextlib.suppress(Exception):
                    await nc.publish(msg.reply, json.dumps(reply, default=str).encode())

        try:
            subs = [await nc.subscribe(s, queue=QUEUE_GROUP, cb=on_request)
                    for s in (LIST_SUBJECT, GET_SUBJECT)]
            await nc.flush()
            log.info("directory: serving %s and %s", LIST_SUBJECT, GET_SUBJECT)
            self.ready.set()
            await stop.wait()
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)

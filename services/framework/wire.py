"""What a service sends and receives: commands to the intake, events from the EVENTS stream.

Only NATS and the wire contracts: a service never opens the platform's database.
"""

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.contracts.events import ORIGINATOR_ID, POSITION, TOPIC
from services.framework.credentials import ServiceCredentials

COMMANDS_PREFIX = "cloudkernel.commands."  # as gateways.stream.intake serves them
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class CommandResult:
    """The intake's answer to a command that ran (or ran before under the same key)."""

    command: str
    idempotency_key: str
    replayed: bool
    positions: tuple[int, ...]
    correlation_id: UUID
    result: Any  # the command's result, decoded JSON


class CommandRefusedError(Exception):
    """The intake refused a command (codes as the intake's: invalid, forbidden, not_found,
    conflict, ...) or did not answer (`unavailable`: retry with the same key)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.field = code, message, field


@dataclass(frozen=True)
class ServiceEvent:
    """One public event as a consumer gets it."""

    position: int
    subject: str
    topic: str
    headers: Mapping[str, str]
    payload: bytes
    originator_id: UUID
    _data: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)

    def data(self) -> dict[str, Any]:
        """The payload, decoded from JSON (once)."""
        if not self._data:
            self._data.append(json.loads(self.payload))
        return self._data[0]

    @classmethod
    def from_msg(cls, msg: Msg) -> "ServiceEvent":
        """The event a JetStream message carries (headers as the relay sets them)."""
        headers = dict(msg.headers or {})
        return cls(position=int(headers.get(POSITION, "0")), subject=msg.subject,
                   topic=headers.get(TOPIC, msg.subject.removeprefix("cloudkernel.events.")),
                   headers=headers, payload=bytes(msg.data),
                   originator_id=UUID(headers[ORIGINATOR_ID]))


@dataclass(frozen=True)
class OperationOutcome:
    """How an operation ended: `status` is Succeeded, Failed, Compensated or Cancelled."""

    operation_id: UUID
    status: str
    position: int
    error_code: str | None = None
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        """Whether every step succeeded."""
        return self.status == "Succeeded"


def signed_headers(credentials: ServiceCredentials, subject: str, idempotency_key: str,
                   body: bytes) -> dict[str, str]:
    """The headers of a request signed with the service's key."""
    timestamp = str(int(time.time()))
    return {IDEMPOTENCY_KEY_HEADER: idempotency_key, KEY_ID_HEADER: credentials.key_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(credentials.secret, timestamp=timestamp, subject=subject,
                                   idempotency_key=idempotency_key, body=body)}


async def send_command(nc: Client, tag: str, body: Mapping[str, Any], *, idempotency_key: str,
                       credentials: ServiceCredentials, bearer_token: str | None = None,
                       timeout: float = 30) -> CommandResult:
    """Send one command to the intake and wait for its reply; CommandRefusedError if it was
    refused or not answered."""
    subject = COMMANDS_PREFIX + tag
    data = json.dumps(body, default=str).encode()
    if bearer_token is not None:
        headers = {IDEMPOTENCY_KEY_HEADER: idempotency_key,
                   "Authorization": f"Bearer {bearer_token}"}
    else:
        headers = signed_headers(credentials, subject, idempotency_key, data)
    try:
        msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise CommandRefusedError(UNAVAILABLE, f"nobody serves {subject} (is the platform's "
                                  "intake running?); retry with the same key") from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise CommandRefusedError(UNAVAILABLE, f"no reply on {subject} within {timeout:g}s; "
                                  "retry with the same key") from None
    reply = json.loads(msg.data)
    if not reply.get("ok"):
        error = reply.get("error") or {}
        detail = error.get("detail") or {}
        raise CommandRefusedError(str(error.get("code", "internal")),
                                  str(error.get("message", "refused")),
                                  detail.get("field") if isinstance(detail, dict) else None)
    return CommandResult(command=reply["command"], idempotency_key=reply["idempotency_key"],
                         replayed=bool(reply["replayed"]),
                         positions=tuple(reply.get("positions") or ()),
                         correlation_id=UUID(reply["correlation_id"]),
                         result=reply.get("result"))

"""Asking a hypervisor worker's desk for a VM's console (`kernel.contracts.console`)."""

from uuid import UUID

import msgspec
import nats.errors
from nats.aio.client import Client

from kernel.contracts.console import (
    DESK_SUBJECT,
    DeskError,
    DeskReply,
    Kind,
    sign_desk_request,
)

_reply = msgspec.json.Decoder(DeskReply)  # type: ignore[var-annotated]


async def ask_desk(nc: Client, secret: bytes, *, vm_id: UUID, host_uri: str, kind: Kind,
                   timeout: float = 15.0) -> DeskReply:
    """The desk's answer for the VM's console of `kind`; a DeskError when none answers."""
    request = sign_desk_request(secret, vm_id=vm_id, host_uri=host_uri, kind=kind)
    try:
        msg = await nc.request(DESK_SUBJECT, msgspec.json.encode(request), timeout=timeout)
    except nats.errors.NoRespondersError:
        return DeskError(code="unavailable", error="no hypervisor worker offers consoles "
                         "(none runs, or none has the console secret)")
    except (nats.errors.TimeoutError, TimeoutError):
        return DeskError(code="unavailable",
                         error=f"the hypervisor workers did not answer within {timeout:g}s")
    try:
        return _reply.decode(msg.data)
    except msgspec.DecodeError as e:
        return DeskError(code="unavailable", error=f"the desk's answer was not understood: {e}")

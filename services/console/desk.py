"""Asking a hypervisor worker's desk for a VM's console (`kernel.contracts.console`)."""

import msgspec
import nats.errors
from nats.aio.client import Client

from kernel.contracts.console import (
    DESK_SUBJECT,
    DeskError,
    DeskReply,
    DeskRequest,
)

_reply = msgspec.json.Decoder(DeskReply)  # type: ignore[var-annotated]


async def ask_desk(nc: Client, request: DeskRequest, *, timeout: float = 15.0) -> DeskReply:
    """The desk's answer to a signed request (`sign_desk_request`); a DeskError when none
    answers."""
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

"""The public event feed: every log event, in log order, shaped for integrators (the shape
is the contract in `kernel.contracts.events`)."""

from uuid import UUID

import msgspec

from kernel.contracts.events import (
    ACTOR,
    CAUSATION_ID,
    CORRELATION_ID,
    ORIGINATOR_ID,
    ORIGINATOR_VERSION,
    POSITION,
    SUBJECT_PREFIX,
    TOPIC,
    PublicEvent,
)
from kernel.store.application import KernelApplication


class _Audit(msgspec.Struct):
    actor: str = ""
    correlation_id: UUID | None = None
    causation_id: str | None = None


_audit = msgspec.json.Decoder(_Audit)


class EventFeed:
    """Reads the log after a position and shapes each event for the EVENTS stream."""

    def __init__(self, app: KernelApplication, *, subject_prefix: str = SUBJECT_PREFIX):
        self.app, self.subject_prefix = app, subject_prefix

    def read(self, after: int, limit: int = 1000) -> list[PublicEvent]:
        """Up to `limit` events after position `after`, in log order."""
        out = []
        for note in self.app.recorder.select_notifications(
                start=after, limit=limit, inclusive_of_start=False):
            audit = _audit.decode(note.state)
            headers = {
                POSITION: str(note.id),
                ORIGINATOR_ID: str(note.originator_id),
                ORIGINATOR_VERSION: str(note.originator_version),
                TOPIC: note.topic,
                ACTOR: audit.actor,
            }
            if audit.correlation_id is not None:
                headers[CORRELATION_ID] = str(audit.correlation_id)
            if audit.causation_id:
                headers[CAUSATION_ID] = audit.causation_id
            out.append(PublicEvent(note.id, self.subject_prefix + note.topic, headers,
                                   bytes(note.state)))
        return out

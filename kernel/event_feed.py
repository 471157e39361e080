"""The public event feed: every log event, in log order, shaped for integrators.

Subjects are `cloudkernel.events.<aggregate>.<Event>`, made from the event's explicit topic
(`host.CapacityClaimed` -> `cloudkernel.events.host.CapacityClaimed`), so they are as stable
as the topics: never renamed. The payload is the event's stored msgspec JSON, as it is in the
log; headers carry what an integrator filters and deduplicates on.
"""

from collections.abc import Mapping
from uuid import UUID

import msgspec

from kernel.store.application import KernelApplication

SUBJECT_PREFIX = "cloudkernel.events."
EVENTS_STREAM = "EVENTS"

POSITION = "Cloudkernel-Position"
ORIGINATOR_ID = "Cloudkernel-Originator-Id"
ORIGINATOR_VERSION = "Cloudkernel-Originator-Version"
TOPIC = "Cloudkernel-Topic"
ACTOR = "Cloudkernel-Actor"
CORRELATION_ID = "Cloudkernel-Correlation-Id"
CAUSATION_ID = "Cloudkernel-Causation-Id"


class PublicEvent(msgspec.Struct, frozen=True):
    """One log event ready to publish."""

    position: int
    subject: str
    headers: Mapping[str, str]
    payload: bytes


class _Audit(msgspec.Struct):
    actor: str = ""
    correlation_id: UUID | None = None
    causation_id: str | None = None


_audit = msgspec.json.Decoder(_Audit)


def subject_of(topic: str) -> str:
    """`cloudkernel.events.<aggregate>.<Event>` for an event topic."""
    return SUBJECT_PREFIX + topic


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

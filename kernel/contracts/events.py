"""The public event stream's contract: subjects, headers and the shape of a published event.

Subjects are `cloudkernel.events.<aggregate>.<Event>`, made from the event's explicit topic
(`host.CapacityClaimed` -> `cloudkernel.events.host.CapacityClaimed`), so they are as stable
as the topics: never renamed. The payload is the event's stored msgspec JSON, as it is in the
log; headers carry what an integrator filters and deduplicates on.
"""

from collections.abc import Mapping

import msgspec

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


def subject_of(topic: str) -> str:
    """`cloudkernel.events.<aggregate>.<Event>` for an event topic."""
    return SUBJECT_PREFIX + topic

"""The ACL log on NATS: its own stream (ACL_EVENTS) and subjects (cloudkernel.acl.events.>)."""

from collections.abc import Sequence

from gateways.acl.application import ACL_EVENTS_STREAM, ACL_SUBJECT_PREFIX
from gateways.stream.relay import EventRelay
from kernel.event_feed import EventFeed
from kernel.store.application import KernelApplication


def acl_relay(app: KernelApplication, servers: Sequence[str], **kwargs: int | float) -> EventRelay:
    """An EventRelay that publishes the ACL log on the ACL's own stream and subjects."""
    return EventRelay(EventFeed(app, subject_prefix=ACL_SUBJECT_PREFIX), servers,
                      stream=ACL_EVENTS_STREAM, subject_prefix=ACL_SUBJECT_PREFIX,
                      **kwargs)  # type: ignore[arg-type]

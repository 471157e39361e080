"""The AsyncAPI 3.0.0 document of the event subjects and the command subjects.

One channel per event topic (the relay publishes to it; integrators receive) and one per
command (integrators send a core NATS request and receive the reply on their inbox). Payloads
and headers are the same schemas as the standalone JSON Schema files, kept in
`components/schemas`.
"""

from collections.abc import Sequence
from importlib import metadata
from typing import Any

from aggregates.errors import ConfigError
from gateways.contracts.catalog import CommandContract, EventContract
from gateways.contracts.schemas import (
    command_headers_schema,
    components,
    event_headers_schema,
    reply_headers_schema,
    reply_schemas,
)
from kernel.contracts.events import EVENTS_STREAM, SUBJECT_PREFIX, TOPIC
from kernel.settings import Settings

ASYNCAPI_VERSION = "3.0.0"
REPLY_CHANNEL = "commandReply"


def _version() -> str:
    try:
        return metadata.version("cloudkernel")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


def asyncapi_document(events: Sequence[EventContract],
                      commands: Sequence[CommandContract]) -> dict[str, Any]:
    """The whole AsyncAPI document as a JSON-ready dict."""
    names, schemas = components(events, commands)
    extra = {**reply_schemas(), "EventHeaders": event_headers_schema(),
             "CommandHeaders": command_headers_schema()}
    clash = sorted(extra.keys() & schemas.keys())
    if clash:
        raise ConfigError(f"a payload type is named like a generated schema: {clash}; "
                          "rename the type")
    schemas.update(extra)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for e in events:
        key = "event." + e.topic
        messages[key] = {
            "name": e.topic, "title": e.topic, "summary": e.description,
            "contentType": "application/json",
            "headers": {"allOf": [
                {"$ref": "#/components/schemas/EventHeaders"},
                {"properties": {TOPIC: {"const": e.topic}}}]},
            "payload": {"$ref": f"#/components/schemas/{names[e.topic]}"},
            "x-cloudkernel-class-version": e.class_version,
        }
        if e.class_version > 1:
            messages[key]["description"] = (
                f"Events recorded before class version {e.class_version} keep their shape on "
                f"the stream: see events/{e.topic}.v<N>.json (version 1 has no class_version).")
        channels[key] = {
            "address": e.subject, "title": e.topic,
            "description": f"{e.description} Stored in the JetStream stream {EVENTS_STREAM}.",
            "messages": {e.topic: {"$ref": f"#/components/messages/{key}"}},
        }
        operations["receive." + e.topic] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"Consume {e.topic} from the {EVENTS_STREAM} stream.",
            "messages": [{"$ref": f"#/channels/{key}/messages/{e.topic}"}],
        }
    for c in commands:
        key = "command." + c.tag
        messages[key] = {
            "name": c.tag, "title": c.tag, "summary": c.description,
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/CommandHeaders"},
            "payload": {"$ref": f"#/components/schemas/{names[c.tag]}"},
        }
        channels[key] = {
            "address": c.subject, "title": c.tag, "description": c.description,
            "messages": {"request": {"$ref": f"#/components/messages/{key}"}},
        }
        operations["send." + c.tag] = {
            "action": "send", "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"Request {c.tag} (core NATS request/reply).",
            "messages": [{"$ref": f"#/channels/{key}/messages/request"}],
            "reply": {
                "channel": {"$ref": f"#/channels/{REPLY_CHANNEL}"},
                "messages": [{"$ref": f"#/channels/{REPLY_CHANNEL}/messages/{m}"}
                             for m in ("accepted", "refused")],
            },
        }
    for name in ("accepted", "refused"):
        shape = "CommandAccepted" if name == "accepted" else "CommandRefused"
        messages["reply." + name] = {
            "name": shape, "title": shape, "contentType": "application/json",
            "headers": reply_headers_schema(),
            "payload": {"$ref": f"#/components/schemas/{shape}"},
        }
    channels[REPLY_CHANNEL] = {
        # null: the reply goes to the requester's own inbox, known only at run time
        "address": None, "title": "command reply",
        "description": "The reply inbox of a command request (NATS request/reply).",
        "messages": {n: {"$ref": f"#/components/messages/reply.{n}"}
                     for n in ("accepted", "refused")},
    }
    port = Settings().nats_port
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "cloudkernel",
            "version": _version(),
            "description": (
                f"Every event in the cloudkernel log is published, in log order and exactly "
                f"once, to the JetStream stream {EVENTS_STREAM} on "
                f"`{SUBJECT_PREFIX}<topic>`; commands are core NATS requests. "
                "See docs/integrators.md for the versioning policy."),
        },
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": f"127.0.0.1:{port}", "protocol": "nats",
                "description": "the embedded nats-server of `cloudkernel up`; a deployment "
                               "uses the NATS cluster of its setting nats_urls",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }

"""JSON Schemas of the public events, the wire commands, their headers and the command replies.

Payload schemas come from msgspec (`msgspec.json.schema`) on the same types the store and the
command intake decode with; only the headers and the reply envelope are written out here,
from the header names the event feed uses.
"""

import inspect
from collections.abc import Iterable
from typing import Any

import msgspec

from gateways.contracts.catalog import CommandContract, EventContract, all_command_tags
from gateways.stream.intake import ERROR_HEADER
from kernel.commands import MAX_KEY_LENGTH, Command
from kernel.contracts import events
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    MAX_SKEW_SECONDS,
    SCHEME,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"
TAG_FIELD = str(Command.__struct_config__.tag_field)
# The intake's refusal codes (gateways.stream.intake), in the order a request is checked.
ERROR_CODES = ("malformed", "unauthenticated", "unknown_command", "forbidden", "invalid",
               "not_found", "conflict", "idempotency_key_reused", "unavailable", "internal")
NATS_MSG_ID = "Nats-Msg-Id"

_DECIMAL = {"type": "string", "pattern": "^[1-9][0-9]*$"}
_UUID = {"type": "string", "format": "uuid"}


def event_headers_schema(topic: str | None = None) -> dict[str, Any]:
    """The NATS headers of a message on an event subject (of one topic, or of any)."""
    props = {
        events.POSITION: {**_DECIMAL, "description": "position of the event in the log: "
                              "unique and increasing; deduplicate by it"},
        events.ORIGINATOR_ID: {**_UUID, "description": "id of the entity that changed"},
        events.ORIGINATOR_VERSION: {**_DECIMAL, "description": "version of the entity "
                                        "after this event, 1 for the event that created it"},
        events.TOPIC: {"type": "string", "description": "the event topic",
                           **({"const": topic} if topic else {})},
        events.ACTOR: {"type": "string", "description": "who caused the event"},
        events.CORRELATION_ID: {**_UUID, "description": "the operation or command the event "
                                    "belongs to; absent when there is none"},
        events.CAUSATION_ID: {"type": "string", "description": "the command or event that "
                                  "caused it; absent when there is none"},
        NATS_MSG_ID: {**_DECIMAL, "description": "JetStream dedup id, equal to the position"},
    }
    required = [events.POSITION, events.ORIGINATOR_ID, events.ORIGINATOR_VERSION,
                events.TOPIC, events.ACTOR, NATS_MSG_ID]
    return {"type": "object", "properties": props, "required": required}


def command_headers_schema() -> dict[str, Any]:
    """The NATS headers of a command request: its idempotency key and its signature."""
    return {"type": "object", "properties": {
        IDEMPOTENCY_KEY_HEADER: {
            "type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH,
            "description": "the same key and body run once; the same key with another body "
                           "is refused"},
        KEY_ID_HEADER: {"type": "string", "minLength": 1,
                        "description": "id of the access key that signs"},
        TIMESTAMP_HEADER: {"type": "string", "pattern": "^[0-9]{1,12}$",
                           "description": "unix seconds when the request was signed; refused "
                                          f"when more than {MAX_SKEW_SECONDS} s off the "
                                          "server's clock"},
        SIGNATURE_HEADER: {
            "type": "string", "pattern": "^[0-9a-fA-F]{64}$",
            "description": "hex HMAC-SHA256, keyed with the UTF-8 bytes of the key's secret, "
                           f"over \"{SCHEME}\\n{{timestamp}}\\n{{subject}}\\n"
                           "{idempotency key}\\n{hex SHA-256 of the body}\""},
    }, "required": [IDEMPOTENCY_KEY_HEADER, KEY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER]}


def reply_headers_schema() -> dict[str, Any]:
    """The NATS headers of a command reply."""
    return {"type": "object", "properties": {
        ERROR_HEADER: {"type": "string", "enum": list(ERROR_CODES),
                       "description": "the error code; on error replies only"},
        events.CORRELATION_ID: {**_UUID, "description": "the reply's correlation_id; on "
                                    "successful replies only"},
        "Retry-After": {**_DECIMAL, "description": "seconds to wait before retrying; on "
                        "`unavailable` replies only"}}}


def reply_schemas() -> dict[str, dict[str, Any]]:
    """The two reply bodies, `CommandAccepted` and `CommandRefused`, by name."""
    accepted = {
        "title": "CommandAccepted",
        "description": "The command ran (or had run: `replayed`). Its events carry the "
                       "header Cloudkernel-Correlation-Id equal to `correlation_id`.",
        "type": "object",
        "properties": {
            "ok": {"const": True},
            "command": {"type": "string", "description": "the command tag"},
            "idempotency_key": {"type": "string"},
            "replayed": {"type": "boolean", "description": "true when the key had run before; "
                         "nothing was written this time"},
            "positions": {"type": "array", "items": {"type": "integer", "minimum": 1},
                          "description": "log positions of the events written (empty when "
                                         "replayed)"},
            "correlation_id": _UUID,
            "result": {"description": "the command's result, as the command describes it"},
        },
        "required": ["ok", "command", "idempotency_key", "replayed", "positions",
                     "correlation_id", "result"],
    }
    refused = {
        "title": "CommandRefused",
        "description": "The command was not run and nothing was written.",
        "type": "object",
        "properties": {
            "ok": {"const": False},
            "error": {"type": "object", "properties": {
                "code": {"type": "string", "enum": list(ERROR_CODES)},
                "message": {"type": "string", "description": "what was wrong, for a person"},
                "field": {"type": "string", "description": "the body field (a path such as "
                          "`plan.steps[0].action`) or header at fault; absent when the "
                          "error concerns none"},
                "reason": {"type": "string", "description": "the kernel's own error code, "
                           "finer than `code`; may be absent"},
                "retry_after": {"type": "integer", "minimum": 1, "description": "on "
                                "`unavailable` (the event store cannot serve now): seconds "
                                "to wait before sending the same request again, with the "
                                "same Idempotency-Key, which applies it at most once"},
                "detail": {"type": "object", "description": "the kernel's details of the "
                           "error (e.g. the entity and its state); may be absent"},
            }, "required": ["code", "message"]},
        },
        "required": ["ok", "error"],
    }
    return {"CommandAccepted": accepted, "CommandRefused": refused}


def reply_schema() -> dict[str, Any]:
    """The schema of any command reply, one document with both shapes."""
    defs = reply_schemas()
    return {"$schema": DIALECT, "title": "CommandReply",
            "description": "The reply to a command request.",
            "oneOf": [{"$ref": f"#/$defs/{name}"} for name in defs], "$defs": defs}


def event_schema(event: EventContract) -> dict[str, Any]:
    """The standalone schema of one event's payload, with its topic, subject and headers."""
    root = _standalone(event.payload_type, event.description, command=False)
    return {
        "$schema": DIALECT,
        "x-cloudkernel-topic": event.topic,
        "x-cloudkernel-subject": event.subject,
        "x-cloudkernel-class-version": event.class_version,
        "x-cloudkernel-headers": event_headers_schema(event.topic),
        **root,
    }


def command_schema(command: CommandContract) -> dict[str, Any]:
    """The standalone schema of one command's request body, with its subject and headers."""
    root = _standalone(command.cls, command.description, command=True)
    return {
        "$schema": DIALECT,
        "x-cloudkernel-command": command.tag,
        "x-cloudkernel-subject": command.subject,
        "x-cloudkernel-headers": command_headers_schema(),
        **root,
    }


def components(events: Iterable[EventContract],
               commands: Iterable[CommandContract]) -> tuple[dict[str, str], dict[str, Any]]:
    """Every payload schema in one namespace, for `#/components/schemas` of AsyncAPI.

    Returns the component name of each topic and tag, and the schemas, made compatible with
    the AsyncAPI Schema Object (a JSON Schema draft-07 superset).
    """
    events, commands = list(events), list(commands)
    types: list[Any] = [e.payload_type for e in events] + [c.cls for c in commands]
    refs, defs = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    names = {}
    for key, ref in zip([e.topic for e in events] + [c.tag for c in commands], refs,
                        strict=True):
        names[key] = ref["$ref"].rsplit("/", 1)[1]
    for e in events:
        defs[names[e.topic]]["description"] = e.description
    _drop_required_tags(defs)
    for c in commands:
        defs[names[c.tag]]["additionalProperties"] = False  # the intake refuses unknown fields
    return names, _draft07(_clean(defs))


def _standalone(type_: Any, description: str, *, command: bool) -> dict[str, Any]:
    """A schema whose root is the type's object schema, its nested types under `$defs`."""
    schema = msgspec.json.schema(type_)
    defs = schema["$defs"]
    name = schema["$ref"].rsplit("/", 1)[1]
    root = dict(defs.pop(name))
    root["description"] = description
    if command:
        _drop_required_tags({name: root, **defs})
        root["additionalProperties"] = False  # the intake refuses unknown fields
    if defs:
        root["$defs"] = defs
    return dict(_clean(root))


def _drop_required_tags(defs: dict[str, Any]) -> None:
    """A command's body names its command by subject, so its tag field is optional."""
    tags = all_command_tags()
    for schema in defs.values():
        tag = schema.get("properties", {}).get(TAG_FIELD)
        if tag is not None and "required" in schema and tag.get("enum", [None])[0] in tags:
            schema["required"] = [f for f in schema["required"] if f != TAG_FIELD]
            tag["description"] = "optional: the subject names the command"


def _clean(node: Any) -> Any:
    """Docstrings as msgspec copies them keep their indentation; normalise them."""
    if isinstance(node, dict):
        return {k: (inspect.cleandoc(v) if k == "description" and isinstance(v, str)
                    else _clean(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _draft07(node: Any) -> Any:
    """Rewrite draft 2020-12 tuple keywords (`prefixItems`) in their draft-07 form."""
    if isinstance(node, dict):
        out = {k: _draft07(v) for k, v in node.items()}
        if "prefixItems" in out:
            closed = out.get("items") is False
            out["items"] = out.pop("prefixItems")
            if closed:
                out["additionalItems"] = False
        return out
    if isinstance(node, list):
        return [_draft07(v) for v in node]
    return node

"""The AsyncAPI document: valid AsyncAPI 3.0.0, every reference resolves, every subject listed.

`asyncapi-3.0.0.schema.json` is the official AsyncAPI 3.0.0 JSON Schema ("without $id"
variant) from the npm package @asyncapi/specs 6.11.1 (Apache-2.0), minified.
"""

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from gateways.contracts.catalog import public_commands, public_events
from gateways.contracts.documents import DEFAULT_DIR

OFFICIAL_SCHEMA = Path(__file__).with_name("asyncapi-3.0.0.schema.json")
COMPONENT_KEY = re.compile(r"^[\w\d.\-_]+$")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return json.loads((DEFAULT_DIR / "asyncapi.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def official() -> Draft7Validator:
    return Draft7Validator(json.loads(OFFICIAL_SCHEMA.read_text()))


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"not an internal reference: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved reference {ref}"
        node = node[part]
    return node


def test_it_is_valid_against_the_official_asyncapi_3_schema(
        doc: dict[str, Any], official: Draft7Validator) -> None:
    errors = sorted(official.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:5]]


def test_the_official_schema_catches_a_broken_document(
        doc: dict[str, Any], official: Draft7Validator) -> None:
    broken = {**doc, "operations": {**doc["operations"], "x": {
        "action": "publish", "channel": {"$ref": "#/channels/nowhere"}}}}
    assert list(official.iter_errors(broken))
    assert list(official.iter_errors({k: v for k, v in doc.items() if k != "info"}))


def test_key_asyncapi_3_requirements_hold(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert all(s["protocol"] == "nats" for s in doc["servers"].values())
    for key, channel in doc["channels"].items():
        assert "address" in channel and channel["messages"], key
    for key, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), key
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/")
        # an operation's messages are messages of its own channel
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), key
    for section in ("schemas", "messages"):
        assert all(COMPONENT_KEY.match(k) for k in doc["components"][section])


def test_every_internal_reference_resolves(doc: dict[str, Any]) -> None:
    found = refs(doc)
    assert len(found) > 500
    for ref in set(found):
        resolve(doc, ref)
    with pytest.raises(AssertionError):
        resolve(doc, "#/components/schemas/NoSuchThing")


def test_every_event_and_command_has_its_channel_and_operation(doc: dict[str, Any]) -> None:
    addresses = {c["address"]: c for c in doc["channels"].values()}
    receive = {o["channel"]["$ref"] for o in doc["operations"].values()
               if o["action"] == "receive"}
    for e in public_events():
        channel = addresses[e.subject]
        message = resolve(doc, next(iter(channel["messages"].values()))["$ref"])
        payload = resolve(doc, message["payload"]["$ref"])
        assert set(payload["required"]) >= {"timestamp", "actor", "correlation_id"}
        assert message["x-cloudkernel-class-version"] == e.class_version
        assert f"#/channels/event.{e.topic}" in receive
    for c in public_commands():
        assert c.subject in addresses
        send = doc["operations"][f"send.{c.tag}"]
        assert send["action"] == "send"
        reply = send["reply"]
        assert resolve(doc, reply["channel"]["$ref"])["address"] is None  # the caller's inbox
        shapes = {resolve(doc, resolve(doc, m["$ref"])["$ref"])["payload"]["$ref"]
                  for m in reply["messages"]}
        assert shapes == {"#/components/schemas/CommandAccepted",
                          "#/components/schemas/CommandRefused"}

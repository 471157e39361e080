"""The committed contract documents: render them from the code, write them, check them.

Layout under the contracts folder (docs/contracts in the repository):

    events/<topic>.json         one JSON Schema per event topic (current class version)
    events/<topic>.v<N>.json    the schema of an older class version N, frozen when it changed
    commands/<tag>.json         one JSON Schema per command body
    command-reply.json          the reply to any command
    asyncapi.json               the AsyncAPI 3.0.0 document

Files are JSON with sorted keys and a final newline, so equal contracts are equal bytes.
"""

import json
import re
from pathlib import Path
from typing import Any

from gateways.contracts.asyncapi import asyncapi_document
from gateways.contracts.catalog import public_commands, public_events
from gateways.contracts.schemas import command_schema, event_schema, reply_schema

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "docs" / "contracts"
CLASS_VERSION_KEY = "x-cloudkernel-class-version"
_FROZEN = re.compile(r"^events/(?P<topic>.+)\.v(?P<version>[1-9][0-9]*)\.json$")


def dumps(document: Any) -> bytes:
    """The canonical bytes of a document."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def render() -> dict[str, bytes]:
    """Every generated document, by its path relative to the contracts folder."""
    events, commands = public_events(), public_commands()
    out = {f"events/{e.topic}.json": dumps(event_schema(e)) for e in events}
    out.update({f"commands/{c.tag}.json": dumps(command_schema(c)) for c in commands})
    out["command-reply.json"] = dumps(reply_schema())
    out["asyncapi.json"] = dumps(asyncapi_document(events, commands))
    return out


def _committed(folder: Path, expected: dict[str, bytes]) -> dict[str, bytes]:
    """The documents in the folder: only its events/ and commands/ are wholly ours."""
    paths = [p for sub in ("events", "commands") for p in sorted((folder / sub).glob("*.json"))]
    paths += [folder / name for name in expected if "/" not in name]
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths if p.is_file()}


def _class_version(data: bytes) -> int | None:
    try:
        value = json.loads(data).get(CLASS_VERSION_KEY)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _current_versions(documents: dict[str, bytes]) -> dict[str, int]:
    """The current class version of each event topic in a set of documents."""
    out = {}
    for path, data in documents.items():
        if path.startswith("events/") and not _FROZEN.match(path):
            version = _class_version(data)
            if version is not None:
                out[path.removeprefix("events/").removesuffix(".json")] = version
    return out


def check(folder: Path = DEFAULT_DIR) -> list[str]:
    """What differs between the committed documents and the code; empty when up to date."""
    if not folder.is_dir():
        return [f"no contracts folder at {folder}"]
    expected = render()
    committed = _committed(folder, expected)
    problems = []
    for path, data in expected.items():
        if path not in committed:
            problems.append(f"missing: {path}")
        elif committed[path] != data:
            problems.append(f"out of date: {path}{_version_note(committed[path], data)}")
    for path in committed:
        if path in expected:
            continue
        frozen = _FROZEN.match(path)
        if frozen is None:
            problems.append(f"not generated from the code (a removed or renamed contract?): "
                            f"{path}")
    for topic, version in _current_versions(expected).items():
        for older in range(1, version):
            path = f"events/{topic}.v{older}.json"
            if path not in committed:
                problems.append(f"missing frozen schema of class version {older}: {path}")
    return problems


def _version_note(old: bytes, new: bytes) -> str:
    before, after = _class_version(old), _class_version(new)
    if before is None or after is None:
        return ""
    if before != after:
        return f" (class version {before} -> {after}; `contracts write` freezes v{before})"
    breaking = _breaking(json.loads(old), json.loads(new))
    if breaking:
        return f" (BREAKING without a class version bump: {'; '.join(breaking)})"
    return ""


def _breaking(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Top-level payload changes that old consumers or old payloads would not survive."""
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    out = [f"field {f} removed" for f in sorted(old_props.keys() - new_props.keys())]
    out += [f"field {f} changed type" for f in sorted(old_props.keys() & new_props.keys())
            if _shape(old_props[f]) != _shape(new_props[f])]
    out += [f"new field {f} is required (give it a default)"
            for f in sorted(set(new.get("required", ())) - set(old.get("required", ())))]
    return out


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's type, without the annotations that may change compatibly."""
    return {k: v for k, v in schema.items() if k not in ("default", "description", "title")}


def write(folder: Path = DEFAULT_DIR) -> list[str]:
    """Bring the folder up to date; returns what changed.

    When an event's class version went up, the committed schema of the old version is kept
    as `events/<topic>.v<old>.json` first: payloads recorded before the change keep that shape.
    """
    expected = render()
    committed = _committed(folder, expected)
    changes = []
    old_versions = _current_versions(committed)
    for topic, version in _current_versions(expected).items():
        before = old_versions.get(topic)
        if before is not None and before < version:
            frozen = f"events/{topic}.v{before}.json"
            if frozen not in committed:
                _put(folder / frozen, committed[f"events/{topic}.json"])
                changes.append(f"froze {frozen}")
    for path, data in expected.items():
        if committed.get(path) != data:
            _put(folder / path, data)
            changes.append(f"{'updated' if path in committed else 'created'} {path}")
    for path in committed:
        if path not in expected and not _FROZEN.match(path):
            (folder / path).unlink()
            changes.append(f"removed {path}")
    return changes


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)

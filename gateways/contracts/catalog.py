"""What integrators can see: every public event class and every wire command, found in the code.

Events are the nested event classes of every aggregate in `ALL_AGGREGATES` that carry an
explicit topic; commands are the `Command` subclasses defined in `COMMAND_MODULES`. Both lists
are sorted by topic or tag, so the documents made from them are stable.
"""

import dataclasses
import importlib
import inspect
import typing
from typing import Any

import msgspec
from eventsourcing.domain import Aggregate

from aggregates import ALL_AGGREGATES
from aggregates.errors import ConfigError
from gateways.stream.intake import COMMANDS_PREFIX
from kernel.commands import Command
from kernel.contracts.events import subject_of

# A new command module is added here, and nowhere else.
COMMAND_MODULES: tuple[str, ...] = ("kernel.operation_commands", "kernel.inventory.loader",
                                     "kernel.cloud.vms", "kernel.cloud.templates",
                                     "kernel.cloud.networks", "kernel.cloud.volumes",
                                     "kernel.cloud.volume_copies", "kernel.cloud.vm_moves",
                                     "kernel.cloud.volume_moves",
                                     "kernel.cloud.repair",
                                     "kernel.cloud.hosts",
                                     "kernel.cloud.services",
                                     "kernel.cloud.consoles",
                                     "kernel.cloud.addresses")
# The stored JSON of an event omits these: they have their own columns and NATS headers.
_ORIGINATOR_FIELDS = frozenset({"originator_id", "originator_version"})


@dataclasses.dataclass(frozen=True)
class EventContract:
    """One public event: its topic, subject, class version and payload type."""

    topic: str
    cls: type[Any]
    class_version: int
    payload_type: type[msgspec.Struct]
    description: str

    @property
    def subject(self) -> str:
        """The NATS subject the relay publishes this event on."""
        return subject_of(self.topic)


@dataclasses.dataclass(frozen=True)
class CommandContract:
    """One wire command: its tag, subject and Struct."""

    tag: str
    cls: type[Command]
    description: str

    @property
    def subject(self) -> str:
        """The NATS subject an integrator sends this command to."""
        return COMMANDS_PREFIX + self.tag


def public_events() -> list[EventContract]:
    """Every event class an aggregate can record, sorted by topic."""
    found: dict[str, EventContract] = {}
    for aggregate in ALL_AGGREGATES:
        for cls in _event_classes(aggregate):
            topic = cls.TOPIC
            if topic in found:
                other = found[topic].cls.__qualname__
                raise ConfigError(f"event topic {topic!r} is used by {other} and "
                                  f"{cls.__qualname__}; every event needs its own topic")
            found[topic] = EventContract(
                topic=topic, cls=cls, class_version=int(getattr(cls, "class_version", 1)),
                payload_type=_payload_type(cls), description=_doc(cls))
    return [found[t] for t in sorted(found)]


def public_commands() -> list[CommandContract]:
    """Every command defined in COMMAND_MODULES, sorted by tag."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    found: dict[str, CommandContract] = {}
    for cls in _subclasses(Command):
        # Tests and plugins may define commands too; only the listed modules are public.
        if cls.__module__ not in COMMAND_MODULES:
            continue
        tag = cls.__struct_config__.tag
        if not isinstance(tag, str):
            raise ConfigError(f"command {cls.__qualname__} needs an explicit string tag")
        if tag in found:
            raise ConfigError(f"command tag {tag!r} is used by {found[tag].cls.__qualname__} "
                              f"and {cls.__qualname__}")
        found[tag] = CommandContract(tag=tag, cls=cls, description=_doc(cls))
    return [found[t] for t in sorted(found)]


def all_command_tags() -> frozenset[str]:
    """The tag of every Command subclass imported so far, public or not."""
    return frozenset(str(c.__struct_config__.tag) for c in _subclasses(Command))


def _event_classes(aggregate: type[Aggregate]) -> list[type[Any]]:
    base = aggregate.Event
    created = _created_event_classes(aggregate)
    out = []
    for value in vars(aggregate).values():
        if not (isinstance(value, type) and issubclass(value, base)) or value is base:
            continue
        if not isinstance(getattr(value, "TOPIC", None), str):
            continue
        # eventsourcing copies the base `Created` event into every aggregate; that copy is
        # never recorded when the aggregate names another created event (`host.Registered`).
        if issubclass(value, Aggregate.Created) and created and value not in created:
            continue
        out.append(value)
    return out


def _created_event_classes(aggregate: type[Aggregate]) -> list[type[Any]]:
    """The created event(s) the aggregate records (eventsourcing keeps them per class)."""
    from eventsourcing import domain

    registry: dict[type, list[type[Any]]] = getattr(domain, "_created_event_classes", {})
    return list(registry.get(aggregate, ()))


def _payload_type(cls: type[Any]) -> type[msgspec.Struct]:
    """A Struct with the event's stored fields, named by its topic (as the mapper builds it)."""
    hints = typing.get_type_hints(cls)
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        if f.name in _ORIGINATOR_FIELDS:
            continue
        if f.default is not dataclasses.MISSING:
            fields.append((f.name, hints[f.name], f.default))
        elif f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, hints[f.name], msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, hints[f.name]))
    version = int(getattr(cls, "class_version", 1))
    if version > 1:
        # The mapper writes the class version into the payload of every event past v1.
        fields.append(("class_version", typing.Literal[version]))  # type: ignore[valid-type]
    return msgspec.defstruct(cls.TOPIC, fields, kw_only=True)


def _subclasses(cls: type[Command]) -> list[type[Command]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def _doc(cls: type[Any]) -> str:
    """The first paragraph of the docstring of the class that declared the event or command."""
    topic = getattr(cls, "TOPIC", None)
    # eventsourcing redefines some event classes as subclasses of the declared one.
    declared = next((k for k in cls.__mro__ if topic is None or k.__dict__.get("TOPIC") == topic),
                    cls)
    doc = declared.__dict__.get("__doc__") or ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())

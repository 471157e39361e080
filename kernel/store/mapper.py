"""A msgspec-based Mapper: stored events are compact JSON, encoded and decoded by type.

The library's JSONTranscoder tags every UUID, datetime and Decimal and walks the object in
Python; msgspec encodes them natively and decodes straight into typed fields. Events whose
class is at version 1 decode in one typed pass; newer classes decode to a dict first so that
the library's `upcast_vX_vY` chain can run, then convert by type.
"""

import dataclasses
import typing
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

_ORIGINATOR_FIELDS = frozenset({"originator_id", "originator_version"})
_encoder = msgspec.json.Encoder(decimal_format="string")
_untyped = msgspec.json.Decoder()


class _Codec:
    """Per event class: the typed decoder of its stored state."""

    __slots__ = ("class_version", "cls", "decoder", "state_type")

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls
        self.class_version: int = getattr(cls, "class_version", 1)
        hints = typing.get_type_hints(cls)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for f in dataclasses.fields(cls):
            if f.name in _ORIGINATOR_FIELDS:
                continue
            if f.default is not dataclasses.MISSING:
                fields.append((f.name, hints[f.name], f.default))
            elif f.default_factory is not dataclasses.MISSING:
                default = msgspec.field(default_factory=f.default_factory)
                fields.append((f.name, hints[f.name], default))
            else:
                fields.append((f.name, hints[f.name]))
        self.state_type = msgspec.defstruct(
            f"{cls.__name__}State", fields, kw_only=True, forbid_unknown_fields=False
        )
        self.decoder = msgspec.json.Decoder(self.state_type)

    def build(self, state: Any, originator_id: UUID | str, version: int) -> Any:
        """Make the frozen event object without running __init__ (as the library does)."""
        values = {f: getattr(state, f) for f in state.__struct_fields__}
        values["originator_id"] = originator_id
        values["originator_version"] = version
        event = object.__new__(self.cls)
        object.__setattr__(event, "__dict__", values)
        return event


class MsgspecMapper(Mapper[UUID]):
    """Maps domain events to stored events with msgspec JSON, keeping class_version upcasting."""

    def __init__(self, transcoder: Any = None, compressor: Any = None, cipher: Any = None):
        super().__init__(transcoder=transcoder, compressor=compressor, cipher=cipher)
        self._codecs: dict[str, _Codec] = {}

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        """Encode the event's fields, except the id and version that have their own columns."""
        cls = type(domain_event)
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        data = _encoder.encode(state)
        if self.compressor:
            data = self.compressor.compress(data)
        if self.cipher:
            data = self.cipher.encrypt(data)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=get_topic(cls),
            state=data,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """Decode by type; run upcasters when the stored class version is older."""
        codec = self._codec(stored_event.topic)
        data = stored_event.state
        originator_id = stored_event.originator_id
        if not isinstance(originator_id, UUID):
            originator_id = UUID(str(originator_id))
        try:
            if self.cipher:
                data = self.cipher.decrypt(data)
            if self.compressor:
                data = self.compressor.decompress(data)
            if codec.class_version == 1:
                state = codec.decoder.decode(data)
            else:
                raw = _untyped.decode(data)
                version = raw.pop("class_version", 1)
                while version < codec.class_version:
                    getattr(codec.cls, f"upcast_v{version}_v{version + 1}")(raw)
                    version += 1
                state = msgspec.convert(raw, codec.state_type, strict=False)
        except Exception as e:
            msg = (
                f"Failed to decode stored event {stored_event.topic} of "
                f"{stored_event.originator_id} v{stored_event.originator_version}: {e}"
            )
            raise MapperDeserialisationError(msg) from e
        return codec.build(state, originator_id, stored_event.originator_version)

    def _codec(self, topic: str) -> _Codec:
        try:
            return self._codecs[topic]
        except KeyError:
            codec = self._codecs[topic] = _Codec(resolve_topic(topic))
            return codec

"""A versioned aggregate for the upcasting tests: v1 is written by one process, v2 reads it.

`python -m support.upcasting write v1 ENV_JSON ID` records v1 events in another interpreter (an
older deployment), since one interpreter cannot hold two classes under the same stable topics.
"""

import functools
import json
import sys
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate

VERSION = "v2"


@functools.cache
def _define(version: str) -> type[PlatformAggregate]:
    if version == "v1":
        class GadgetV1(PlatformAggregate):
            TOPIC = "test.gadget"

            class Event(PlatformAggregate.Event):
                TOPIC = "test.gadget.Event"

            class Made(Event, PlatformAggregate.Created):
                TOPIC = "test.gadget.Made"
                name: str

            class Priced(Event):
                TOPIC = "test.gadget.Priced"
                price: Decimal

            @event(Made)
            def __init__(self, name: str) -> None:
                self.name = name

            def price_at(self, price: Decimal) -> None:
                self._priced(price)

            @event(Priced)
            def _priced(self, price: Decimal) -> None:
                self.price = price

        return GadgetV1

    class Gadget(PlatformAggregate):
        """v2: Made gained `color` (class_version 2, 3 adds `size`), Priced gained `currency`."""

        TOPIC = "test.gadget"

        class Event(PlatformAggregate.Event):
            TOPIC = "test.gadget.Event"

        class Made(Event, PlatformAggregate.Created):
            TOPIC = "test.gadget.Made"
            class_version = 3
            name: str
            color: str
            size: int

            @staticmethod
            def upcast_v1_v2(state: dict[str, Any]) -> None:
                state["color"] = "grey"

            @staticmethod
            def upcast_v2_v3(state: dict[str, Any]) -> None:
                state["size"] = 1

        class Priced(Event):
            TOPIC = "test.gadget.Priced"
            class_version = 2
            price: Decimal
            currency: str

            @staticmethod
            def upcast_v1_v2(state: dict[str, Any]) -> None:
                state["currency"] = "EUR"

        @event(Made)
        def __init__(self, name: str, color: str = "red", size: int = 2) -> None:
            self.name, self.color, self.size = name, color, size

        def price_at(self, price: Decimal, currency: str = "USD") -> None:
            self._priced(price, currency)

        @event(Priced)
        def _priced(self, price: Decimal, currency: str) -> None:
            self.price, self.currency = price, currency

    return Gadget


def write_v1(env: dict[str, str]) -> UUID:
    """Record a v1 gadget (two events) and return its id."""
    from kernel.store.application import KernelApplication

    cls: Any = _define("v1")

    class App(KernelApplication):
        name = "upcast"

    app = App(env=env)
    gadget = cls(name="widget")
    gadget.price_at(Decimal("9.99"))
    app.save(gadget)
    app.close()
    return gadget.id  # type: ignore[no-any-return]


if __name__ == "__main__":
    if sys.argv[1:3] == ["write", "v1"]:
        print(write_v1(json.loads(sys.argv[3])))
    else:
        raise SystemExit(f"usage: {__doc__}")

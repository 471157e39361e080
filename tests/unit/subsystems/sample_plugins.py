"""Plugins for the registry tests, loaded through hand-made entry points."""

from collections.abc import Mapping
from typing import Any

import msgspec

from subsystems.base import StepContext, SubsystemBase, action


class Args(msgspec.Struct, frozen=True):
    text: str = ""


class OtherEcho(SubsystemBase):
    """A second plugin that also calls itself `echo`."""

    name = "echo"
    version = "9.9"

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    @action()
    def echo(self, ctx: StepContext, args: Args) -> Args:
        return args

    @action("shout", Args)
    def shout(self, ctx: StepContext, args: Any) -> dict[str, str]:
        """Upper-case the text."""
        return {"text": args.text.upper()}


class Storage(SubsystemBase):
    name = "storage"
    version = "2.1"

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    @action()
    def create_volume(self, ctx: StepContext, args: Args) -> None:
        return None


class BadActionName(SubsystemBase):
    name = "bad"

    @action("has.dot", Args)
    def dotted(self, ctx: StepContext, args: Args) -> None:
        return None


def make_other_echo(config: Mapping[str, Any]) -> OtherEcho:
    return OtherEcho(config)


def make_storage(config: Mapping[str, Any]) -> Storage:
    return Storage(config)


def make_misnamed(config: Mapping[str, Any]) -> Storage:
    return Storage(config)


def make_bad_action(config: Mapping[str, Any]) -> BadActionName:
    return BadActionName()


def make_broken(config: Mapping[str, Any]) -> Storage:
    raise RuntimeError("driver library missing")


def make_not_a_subsystem(config: Mapping[str, Any]) -> object:
    return object()

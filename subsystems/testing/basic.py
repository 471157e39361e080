"""echo, sleep, flaky and silent: stateless test subsystems.

- `echo.echo` returns its arguments.
- `sleep.sleep` sleeps `seconds`, then returns how long it slept.
- `flaky.fail` fails while `ctx.attempt <= times` (retryable unless `retryable=false`), then
  succeeds. It counts the kernel's attempts, not redeliveries, so it is idempotent by step id.
- `silent.ignore` never answers: it holds the step for `hold_seconds` (the runtime keeps it
  alive with in_progress meanwhile), then raises NoAnswer. The runtime acks the message and
  publishes no outcome, so only the step's deadline tells the kernel, as when a result is lost.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from aggregates.errors import ConfigError, StepFailedError
from subsystems.base import NoAnswer, StepContext, SubsystemBase, action

__all__ = ["Echo", "Flaky", "Silent", "Sleep", "make_echo", "make_flaky", "make_silent",
           "make_sleep"]

VERSION = "1.0"
Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]


class EchoArgs(msgspec.Struct, frozen=True, kw_only=True):
    """Anything to send back."""

    message: str = ""
    data: Any = None


class SleepArgs(msgspec.Struct, frozen=True, kw_only=True):
    """How long to sleep."""

    seconds: Seconds


class Slept(msgspec.Struct, frozen=True, kw_only=True):
    """The sleep step's result."""

    seconds: float
    delivery: int


class FlakyArgs(msgspec.Struct, frozen=True, kw_only=True):
    """Fail the first `times` attempts, retryable or (`retryable=False`) for good."""

    times: Annotated[int, msgspec.Meta(ge=0)] = 1
    retryable: bool = True
    code: str = "flaky"


class SilentArgs(msgspec.Struct, frozen=True, kw_only=True):
    """How long to hold the step before dropping it without an answer."""

    hold_seconds: Seconds = 0.0


class Echo(SubsystemBase):
    """Returns its arguments."""

    name = "echo"
    version = VERSION

    @action()
    def echo(self, ctx: StepContext, args: EchoArgs) -> EchoArgs:
        """Return the arguments unchanged."""
        return args


class Sleep(SubsystemBase):
    """Sleeps, then answers."""

    name = "sleep"
    version = VERSION

    @action()
    def sleep(self, ctx: StepContext, args: SleepArgs) -> Slept:
        """Sleep `seconds`."""
        time.sleep(args.seconds)
        return Slept(seconds=args.seconds, delivery=ctx.delivery)


class Flaky(SubsystemBase):
    """Fails a given number of attempts, then succeeds."""

    name = "flaky"
    version = VERSION

    @action()
    def fail(self, ctx: StepContext, args: FlakyArgs) -> dict[str, int]:
        """Raise StepFailedError while attempt <= times."""
        if ctx.attempt <= args.times:
            raise StepFailedError(f"flaky: attempt {ctx.attempt} fails (times={args.times})",
                                  retryable=args.retryable, code=args.code)
        return {"attempt": ctx.attempt}


class Silent(SubsystemBase):
    """Never answers."""

    name = "silent"
    version = VERSION

    @action()
    def ignore(self, ctx: StepContext, args: SilentArgs) -> None:
        """Hold the step, then drop it without an outcome."""
        time.sleep(args.hold_seconds)
        raise NoAnswer


def _no_config(name: str, config: Mapping[str, Any]) -> None:
    if config:
        raise ConfigError(f"subsystem {name} takes no configuration, got {sorted(config)}")


def make_echo(config: Mapping[str, Any]) -> Echo:
    """Entry point factory of `echo`."""
    _no_config("echo", config)
    return Echo()


def make_sleep(config: Mapping[str, Any]) -> Sleep:
    """Entry point factory of `sleep`."""
    _no_config("sleep", config)
    return Sleep()


def make_flaky(config: Mapping[str, Any]) -> Flaky:
    """Entry point factory of `flaky`."""
    _no_config("flaky", config)
    return Flaky()


def make_silent(config: Mapping[str, Any]) -> Silent:
    """Entry point factory of `silent`."""
    _no_config("silent", config)
    return Silent()

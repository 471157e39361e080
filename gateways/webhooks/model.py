"""What a webhook is: its endpoint, its subject patterns, its deliveries and the retry policy."""

import enum
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import msgspec

from aggregates.errors import ValidationError
from kernel.contracts.events import SUBJECT_PREFIX

# Delivery ids are derived from (webhook, position), so one event has one id per webhook for
# good: a receiver can deduplicate on Cloudkernel-Delivery-Id across retries and redeliveries.
_DELIVERY_NS = uuid.UUID("6f1c2a3e-8d4b-4f0e-9a57-0b1f7c2d9e41")
_PREFIX_TOKENS = SUBJECT_PREFIX.rstrip(".").split(".")


class Status(enum.StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True)
class Webhook:
    """A subscription of an HTTP endpoint to event subjects; its secret is never loaded here."""

    id: str
    url: str
    subjects: tuple[str, ...]
    description: str
    active: bool
    created_at: float

    def matches(self, subject: str) -> bool:
        """True when any of the webhook's patterns matches `subject`."""
        return any(subject_matches(p, subject) for p in self.subjects)


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt of a delivery."""

    attempt_no: int
    at: float
    http_status: int | None
    error: str
    duration_ms: float


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook, and how its delivery went."""

    id: str
    webhook_id: str
    position: int
    subject: str
    status: Status
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str
    created_at: float
    delivered_at: float | None
    history: tuple[Attempt, ...] = ()


@dataclass(frozen=True)
class Outgoing:
    """A delivery ready to send: where, with which secret, and the exact body."""

    id: str
    webhook_id: str
    url: str
    secret: str
    position: int
    subject: str
    body: bytes
    attempts: int
    round_started_at: float
    next_attempt_at: float


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON body of every delivery: where the event sits in the log, and the event itself."""

    subject: str
    position: int
    topic: str
    originator_id: str
    originator_version: int
    actor: str = ""
    correlation_id: str | None = None
    causation_id: str | None = None
    event: msgspec.Raw


@dataclass(frozen=True)
class IncomingEvent:
    """One public event as the intake read it from the EVENTS stream."""

    position: int
    subject: str
    body: bytes


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a number of attempts and an age."""

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 600.0
    jitter: float = 0.2
    max_attempts: int = 8
    max_age: float = 24 * 3600.0
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.cap < self.initial:
            raise ValidationError("retry policy: need initial > 0, factor >= 1, cap >= initial")
        if not 0 <= self.jitter < 1 or self.max_attempts < 1 or self.max_age <= 0:
            raise ValidationError(
                "retry policy: need 0 <= jitter < 1, max_attempts >= 1, max_age > 0")

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (1-based).

        The jitter only shortens the wait (by up to `jitter` of it), so the cap holds and
        endpoints that fail together do not all come back at the same instant.
        """
        base = min(self.cap, self.initial * self.factor ** max(0, attempts - 1))
        return base * (1 - self.jitter * self.rand())

    def next_attempt(self, attempts: int, round_started_at: float, now: float) -> float | None:
        """When to try again after `attempts` failures in this round, or None: give up (dead)."""
        if attempts >= self.max_attempts or now - round_started_at >= self.max_age:
            return None
        return now + self.delay(attempts)


def delivery_id(webhook_id: str, position: int) -> str:
    """The stable id of the delivery of the event at `position` to `webhook_id`."""
    return str(uuid.uuid5(_DELIVERY_NS, f"{webhook_id}:{position}"))


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a final `>` is one or more tokens."""
    pats, subs = pattern.split("."), subject.split(".")
    for i, p in enumerate(pats):
        if p == ">":
            return len(subs) > i
        if i >= len(subs) or (p != "*" and p != subs[i]):
            return False
    return len(pats) == len(subs)


def check_subject_pattern(pattern: str) -> str:
    """The pattern if it is a valid NATS subject pattern that event subjects can match."""
    if not isinstance(pattern, str) or not pattern:
        raise ValidationError("subject pattern: empty")
    if any(c.isspace() for c in pattern):
        raise ValidationError(f"subject pattern {pattern!r}: contains whitespace")
    tokens = pattern.split(".")
    for i, t in enumerate(tokens):
        if not t:
            raise ValidationError(f"subject pattern {pattern!r}: empty token (two dots, or a "
                                  "dot at an end)")
        if t != "*" and t != ">" and ("*" in t or ">" in t):
            raise ValidationError(f"subject pattern {pattern!r}: a wildcard must be a whole "
                                  f"token, got {t!r}")
        if t == ">" and i != len(tokens) - 1:
            raise ValidationError(f"subject pattern {pattern!r}: '>' must be the last token")
    for expected, t in zip(_PREFIX_TOKENS, tokens, strict=False):
        if t == ">":
            break
        if t not in ("*", expected):
            raise ValidationError(
                f"subject pattern {pattern!r} can never match: event subjects are "
                f"{SUBJECT_PREFIX}<aggregate>.<Event>, e.g. {SUBJECT_PREFIX}vm.>")
    else:
        if len(tokens) <= len(_PREFIX_TOKENS):
            raise ValidationError(
                f"subject pattern {pattern!r} can never match: event subjects are "
                f"{SUBJECT_PREFIX}<aggregate>.<Event>, e.g. {SUBJECT_PREFIX}vm.>")
    return pattern


def check_subject_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """Every pattern checked, duplicates dropped, order kept; at least one."""
    if not patterns:
        raise ValidationError("a webhook needs at least one subject pattern (--subject)")
    return tuple(dict.fromkeys(check_subject_pattern(p) for p in patterns))


def check_url(url: str) -> str:
    """The URL if it is an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as e:
        raise ValidationError(f"webhook URL {url!r}: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError(f"webhook URL {url!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValidationError(f"webhook URL {url!r}: no host")
    if any(c.isspace() for c in url):
        raise ValidationError(f"webhook URL {url!r}: contains whitespace")
    return url

"""Webhook rules: subject patterns, URLs, signatures and the backoff schedule."""

import pytest

from aggregates.errors import ValidationError
from gateways.webhooks.intake import to_incoming
from gateways.webhooks.model import (
    RetryPolicy,
    check_subject_pattern,
    check_subject_patterns,
    check_url,
    delivery_id,
    subject_matches,
)
from gateways.webhooks.signing import (
    compute_signature,
    new_secret,
    signature_header,
    verify_signature,
)


@pytest.mark.parametrize(("pattern", "subject", "expected"), [
    ("cloudkernel.events.vm.Started", "cloudkernel.events.vm.Started", True),
    ("cloudkernel.events.vm.Started", "cloudkernel.events.vm.Stopped", False),
    ("cloudkernel.events.vm.*", "cloudkernel.events.vm.Started", True),
    ("cloudkernel.events.vm.*", "cloudkernel.events.vm.Started.extra", False),
    ("cloudkernel.events.vm.*", "cloudkernel.events.vm", False),
    ("cloudkernel.events.*.Created", "cloudkernel.events.zone.Created", True),
    ("cloudkernel.events.*.Created", "cloudkernel.events.zone.Deleted", False),
    ("cloudkernel.events.>", "cloudkernel.events.host.CapacityClaimed", True),
    ("cloudkernel.events.>", "cloudkernel.events", False),
    ("cloudkernel.events.vm.>", "cloudkernel.events.volume.Created", False),
    (">", "cloudkernel.events.vm.Started", True),
    ("*.events.vm.*", "cloudkernel.events.vm.Started", True),
])
def test_subject_patterns_match_like_nats(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


@pytest.mark.parametrize(("pattern", "why"), [
    ("", "empty"),
    ("cloudkernel..vm", "empty token"),
    ("cloudkernel.events.vm.", "empty token"),
    ("cloudkernel.events.>.Started", "last token"),
    ("cloudkernel.events.vm*", "whole token"),
    ("cloudkernel.events. vm", "whitespace"),
    ("vm.*", "can never match"),
    ("cloudkernel.events", "can never match"),
    ("*", "can never match"),
])
def test_bad_subject_patterns_are_refused_with_the_reason(pattern: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        check_subject_pattern(pattern)


def test_patterns_need_at_least_one_and_drop_duplicates() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        check_subject_patterns([])
    assert check_subject_patterns(["cloudkernel.events.>", "cloudkernel.events.>", ">"]) == (
        "cloudkernel.events.>", ">")


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/hook", "http://",
                                 "http://host:99999/x", "https://ex ample.com/"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="webhook URL"):
        check_url(url)


def test_good_urls_pass() -> None:
    assert check_url("https://hooks.example.com/ck?x=1") == "https://hooks.example.com/ck?x=1"
    assert check_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/"


def test_delivery_ids_are_stable_per_webhook_and_position() -> None:
    assert delivery_id("w1", 7) == delivery_id("w1", 7)
    assert len({delivery_id("w1", 7), delivery_id("w1", 8), delivery_id("w2", 7)}) == 3


# --------------------------------------------------------------------------- signatures

SECRET = "whsec_test"
BODY = b'{"subject":"cloudkernel.events.vm.Started","position":5}'


def test_a_signature_verifies_and_matches_the_documented_formula() -> None:
    import hashlib
    import hmac

    header = signature_header(SECRET, 1_700_000_000, BODY)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"v1={expected}"
    assert verify_signature(SECRET, "1700000000", BODY, header, now=1_700_000_010)


def test_tampering_with_body_timestamp_or_secret_fails() -> None:
    ts = 1_700_000_000
    header = signature_header(SECRET, ts, BODY)
    now = ts + 1
    assert not verify_signature(SECRET, ts, BODY + b" ", header, now=now)
    assert not verify_signature(SECRET, ts + 1, BODY, header, now=now)
    assert not verify_signature("whsec_other", ts, BODY, header, now=now)
    assert not verify_signature(SECRET, ts, BODY, "v0=" + header[3:], now=now)
    assert not verify_signature(SECRET, "not-a-number", BODY, header, now=now)
    assert not verify_signature(SECRET, ts, BODY, "", now=now)


def test_an_old_or_future_timestamp_fails_even_when_signed() -> None:
    ts = 1_700_000_000
    header = signature_header(SECRET, ts, BODY)
    assert verify_signature(SECRET, ts, BODY, header, now=ts + 300)
    assert not verify_signature(SECRET, ts, BODY, header, now=ts + 301)
    assert not verify_signature(SECRET, ts, BODY, header, now=ts - 301)
    assert verify_signature(SECRET, ts, BODY, header, tolerance=3600, now=ts + 3000)


def test_one_matching_value_among_several_is_enough() -> None:
    ts = 1_700_000_000
    good = compute_signature(SECRET, ts, BODY)
    assert verify_signature(SECRET, ts, BODY, f"v1=deadbeef, v1={good}", now=ts)


def test_secrets_are_random_and_prefixed() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_") and len(a) == len("whsec_") + 64


# --------------------------------------------------------------------------- backoff


def test_backoff_doubles_from_initial_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(initial=1.0, factor=2.0, cap=10.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_only_shortens_the_wait_within_its_fraction() -> None:
    low = RetryPolicy(initial=4.0, jitter=0.25, rand=lambda: 1.0)
    high = RetryPolicy(initial=4.0, jitter=0.25, rand=lambda: 0.0)
    assert low.delay(1) == 3.0 and high.delay(1) == 4.0
    seeded = RetryPolicy(initial=1.0, factor=2.0, cap=8.0, jitter=0.5)
    for n in range(1, 10):
        base = min(8.0, 2.0 ** (n - 1))
        assert base * 0.5 <= seeded.delay(n) <= base


def test_a_delivery_dies_after_max_attempts_or_max_age() -> None:
    policy = RetryPolicy(initial=1.0, jitter=0.0, max_attempts=3, max_age=100.0)
    assert policy.next_attempt(1, round_started_at=0.0, now=10.0) == 11.0
    assert policy.next_attempt(2, round_started_at=0.0, now=10.0) == 12.0
    assert policy.next_attempt(3, round_started_at=0.0, now=10.0) is None
    assert policy.next_attempt(1, round_started_at=0.0, now=100.0) is None


def test_a_nonsense_policy_is_refused() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(initial=0)
    with pytest.raises(ValidationError):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=0)


# --------------------------------------------------------------------------- envelope


def test_the_body_is_an_envelope_around_the_stored_event() -> None:
    import json

    headers = {"Cloudkernel-Position": "42", "Cloudkernel-Originator-Id": "abc",
               "Cloudkernel-Originator-Version": "3", "Cloudkernel-Topic": "vm.Started",
               "Cloudkernel-Actor": "alice", "Cloudkernel-Correlation-Id": "c1"}
    event = to_incoming("cloudkernel.events.vm.Started", headers, b'{"host_id":"h1"}')
    body = json.loads(event.body)
    assert (event.position, event.subject) == (42, "cloudkernel.events.vm.Started")
    assert body == {"subject": "cloudkernel.events.vm.Started", "position": 42,
                    "topic": "vm.Started", "originator_id": "abc", "originator_version": 3,
                    "actor": "alice", "correlation_id": "c1", "causation_id": None,
                    "event": {"host_id": "h1"}}


@pytest.mark.parametrize(("headers", "data"), [
    ({}, b"{}"),
    ({"Cloudkernel-Position": "x"}, b"{}"),
    ({"Cloudkernel-Position": "1"}, b"\x1f\x8b not json"),
])
def test_a_message_that_is_not_a_public_event_is_refused(headers: dict[str, str],
                                                         data: bytes) -> None:
    with pytest.raises(ValueError):
        to_incoming("cloudkernel.events.vm.Started", headers, data)

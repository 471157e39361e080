"""ConsoleTicket: issued with a digest only, redeemed once, refused late, twice or forged."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.application import Application

from aggregates.base import audit_context
from aggregates.console_ticket import (
    ALREADY_USED,
    EXPIRED,
    NOT_VALID,
    ConsoleTicket,
    ConsoleTicketRefusedError,
)
from aggregates.errors import DomainRuleError
from kernel.contracts.console import make_token, read_token
from kernel.store.testing import scratch_application

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def ticket(expires_at: datetime = NOW + timedelta(seconds=60)) -> tuple[ConsoleTicket, str]:
    ticket_id = uuid4()
    token, digest = make_token(ticket_id)
    with audit_context(actor="alice"):
        made = ConsoleTicket.issue(id=ticket_id, vm_id=uuid4(), host_id=uuid4(),
                                   host_uri="test:///h1", user="alice", account="acme",
                                   kind="graphics", expires_at=expires_at,
                                   secret_digest=digest)
    return made, token


def test_issued_records_the_digest_never_the_token() -> None:
    made, token = ticket()
    [issued] = made.pending_events
    assert issued.TOPIC == "console_ticket.Issued"  # type: ignore[attr-defined]
    secret = token.rsplit(".", 1)[1]
    stored = Application().mapper.to_stored_event(issued).state  # type: ignore[arg-type]
    assert secret.encode() not in stored and token.encode() not in stored
    assert read_token(token) == (made.id, made.secret_digest)
    assert (made.user, made.account, made.kind, made.redeemed) == ("alice", "acme",
                                                                   "graphics", False)


def test_redeemed_once_then_refused_as_already_used() -> None:
    made, token = ticket()
    _, digest = read_token(token)
    made.redeem(digest, NOW, by="service:console", origin="https://console.example",
                remote="10.0.0.9")
    assert made.redeemed and made.redeemed_by == "service:console"
    last = made.pending_events[-1]
    assert last.TOPIC == "console_ticket.Redeemed"  # type: ignore[attr-defined]
    assert (last.origin, last.remote) == ("https://console.example", "10.0.0.9")  # type: ignore[attr-defined]
    with pytest.raises(ConsoleTicketRefusedError, match=ALREADY_USED):
        made.redeem(digest, NOW, by="service:console")
    assert len(made.pending_events) == 2


def test_expired_refused_and_writes_nothing() -> None:
    made, token = ticket()
    _, digest = read_token(token)
    with pytest.raises(ConsoleTicketRefusedError, match=EXPIRED):
        made.redeem(digest, NOW + timedelta(seconds=60), by="service:console")
    assert len(made.pending_events) == 1 and not made.redeemed


def test_wrong_secret_is_not_valid_even_when_used_or_expired() -> None:
    made, token = ticket()
    _, digest = read_token(token)
    _, other = make_token(made.id)
    for when in (NOW, NOW + timedelta(hours=1)):
        with pytest.raises(ConsoleTicketRefusedError) as refused:
            made.redeem(other, when, by="service:console")
        assert str(refused.value) == NOT_VALID
    made.redeem(digest, NOW, by="service:console")
    with pytest.raises(ConsoleTicketRefusedError, match=NOT_VALID):
        made.check(other, NOW)
    assert isinstance(refused.value, DomainRuleError)  # a 409 at the edges


def test_origin_and_remote_are_clipped_and_printable() -> None:
    made, token = ticket()
    _, digest = read_token(token)
    made.redeem(digest, NOW, by="root", origin="x" * 500 + "\x00", remote="a\nb")
    last = made.pending_events[-1]
    assert last.origin == "x" * 200 and last.remote == "a?b"  # type: ignore[attr-defined]


def test_replays_from_the_store() -> None:
    app = scratch_application()
    made, token = ticket()
    _, digest = read_token(token)
    made.redeem(digest, NOW, by="service:console")
    app.save(made)
    loaded: Any = app.repository.get(made.id)
    assert isinstance(loaded, ConsoleTicket)
    assert loaded.redeemed and loaded.expires_at == made.expires_at
    assert loaded.host_uri == "test:///h1" and loaded.secret_digest == digest
    with pytest.raises(ConsoleTicketRefusedError, match=ALREADY_USED):
        loaded.check(digest, NOW)

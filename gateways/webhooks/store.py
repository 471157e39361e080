"""The webhook store: webhooks, their deliveries and every attempt, on SQLite or PostgreSQL.

This is operational delivery state, not platform state, so it lives in plain tables next to
the log rather than in it; in particular a webhook's secret is never an event. Times are unix
seconds (floats), the same clock as the Cloudkernel-Timestamp header.

Tables: `webhooks`, `webhook_deliveries` (one row per webhook and log position, UNIQUE on the
pair, holding the exact body to send), `webhook_attempts` (one row per HTTP attempt). They are
created only by `migrate_webhooks` (the `cloudkernel migrate` step); opening the store
without them fails with a ConfigError that says so.
"""

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from aggregates.errors import ConfigError, NotFoundError, ValidationError
from gateways.webhooks.database import (
    Cursor,
    Database,
    PostgresDatabase,
    SQLiteDatabase,
    open_database,
)
from gateways.webhooks.model import (
    Attempt,
    Delivery,
    IncomingEvent,
    Outgoing,
    Status,
    Webhook,
    check_subject_patterns,
    check_url,
    delivery_id,
)
from gateways.webhooks.signing import new_secret
from kernel.settings import Settings

MAX_LIMIT = 1000
_DELIVERY_COLS = ("d.id, d.webhook_id, d.position, d.subject, d.status, d.attempts, "
                  "d.next_attempt_at, d.last_status, d.last_error, d.created_at, d.delivered_at")


def _schema(db: Database) -> list[str]:
    t = db.table
    return [
        f"""CREATE TABLE IF NOT EXISTS {t('webhooks')} (
            id TEXT PRIMARY KEY, url TEXT NOT NULL, subjects TEXT NOT NULL,
            secret TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
            active BOOLEAN NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS {t('webhook_deliveries')} (
            id TEXT PRIMARY KEY, webhook_id TEXT NOT NULL, position BIGINT NOT NULL,
            subject TEXT NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL,
            attempts INTEGER NOT NULL, next_attempt_at DOUBLE PRECISION NOT NULL,
            round_started_at DOUBLE PRECISION NOT NULL, last_status INTEGER,
            last_error TEXT NOT NULL DEFAULT '', created_at DOUBLE PRECISION NOT NULL,
            delivered_at DOUBLE PRECISION, UNIQUE (webhook_id, position))""",
        # The sender's queue: a webhook's pending deliveries in log order.
        f"""CREATE INDEX IF NOT EXISTS webhook_deliveries_queue
            ON {t('webhook_deliveries')} (webhook_id, status, position)""",
        f"""CREATE INDEX IF NOT EXISTS webhook_deliveries_due
            ON {t('webhook_deliveries')} (status, next_attempt_at)""",
        f"""CREATE TABLE IF NOT EXISTS {t('webhook_attempts')} (
            delivery_id TEXT NOT NULL, attempt_no INTEGER NOT NULL,
            at DOUBLE PRECISION NOT NULL, http_status INTEGER, error TEXT NOT NULL DEFAULT '',
            duration_ms DOUBLE PRECISION NOT NULL, PRIMARY KEY (delivery_id, attempt_no))""",
    ]


class WebhookStore:
    """Webhooks, deliveries and attempts, with the same interface on either store."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.hooks = db.table("webhooks")
        self.deliveries = db.table("webhook_deliveries")
        self.attempts = db.table("webhook_attempts")

    # ------------------------------------------------------------------ schema

    def create_tables(self) -> None:
        """Create the three tables and their indexes; safe to run again."""
        if isinstance(self.db, PostgresDatabase):
            self.db.create_schema()
        with self.db.transaction(write=True) as c:
            for statement in _schema(self.db):
                c.execute(statement)
        if isinstance(self.db, SQLiteDatabase):
            self.db.enable_wal()

    def check_tables(self) -> None:
        """Raise ConfigError unless the tables exist."""
        try:
            with self.db.transaction() as c:
                for table in (self.hooks, self.deliveries, self.attempts):
                    c.execute(f"SELECT 1 FROM {table} LIMIT 1")
        except Exception as e:
            raise ConfigError(f"the webhook tables are missing ({type(e).__name__}); "
                              "run `cloudkernel migrate` first") from None

    def close(self) -> None:
        """Close the store's connections."""
        self.db.close()

    # ------------------------------------------------------------------ webhooks

    def add_webhook(self, url: str, subjects: Sequence[str], description: str = "", *,
                    secret: str | None = None, now: float | None = None) -> tuple[Webhook, str]:
        """Validate and add an active webhook; returns it and its secret (shown once)."""
        url, patterns = check_url(url), check_subject_patterns(subjects)
        if not isinstance(description, str) or len(description) > 1000:
            raise ValidationError("description: at most 1000 characters")
        secret = secret or new_secret()
        hook = Webhook(str(uuid.uuid4()), url, patterns, description, True,
                       time.time() if now is None else now)
        with self.db.transaction(write=True) as c:
            c.execute(f"INSERT INTO {self.hooks} (id, url, subjects, secret, description, "
                      "active, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (hook.id, url, json.dumps(list(patterns)), secret, description, True,
                       hook.created_at))
        return hook, secret

    def list_webhooks(self, *, active_only: bool = False) -> list[Webhook]:
        """Every webhook, oldest first, without secrets."""
        where = " WHERE active" if active_only else ""
        with self.db.transaction() as c:
            c.execute(f"SELECT id, url, subjects, description, active, created_at "
                      f"FROM {self.hooks}{where} ORDER BY created_at, id")
            return [_webhook(r) for r in c.fetchall()]

    def get_webhook(self, webhook_id: str) -> Webhook:
        """One webhook, without its secret; NotFoundError if unknown."""
        with self.db.transaction() as c:
            return self._get_webhook(c, webhook_id)

    def _get_webhook(self, c: Cursor, webhook_id: str) -> Webhook:
        c.execute(f"SELECT id, url, subjects, description, active, created_at "
                  f"FROM {self.hooks} WHERE id = ?", (webhook_id,))
        row = c.fetchone()
        if row is None:
            raise NotFoundError(f"no webhook {webhook_id!r} (see `cloudkernel webhooks list`)")
        return _webhook(row)

    def set_active(self, webhook_id: str, active: bool) -> Webhook:
        """Enable or disable a webhook; a disabled one gets no new deliveries and sends none."""
        with self.db.transaction(write=True) as c:
            self._get_webhook(c, webhook_id)
            c.execute(f"UPDATE {self.hooks} SET active = ? WHERE id = ?", (active, webhook_id))
            return self._get_webhook(c, webhook_id)

    def remove_webhook(self, webhook_id: str) -> int:
        """Delete a webhook with its deliveries and attempts; returns the deliveries removed."""
        with self.db.transaction(write=True) as c:
            self._get_webhook(c, webhook_id)
            c.execute(f"DELETE FROM {self.attempts} WHERE delivery_id IN "
                      f"(SELECT id FROM {self.deliveries} WHERE webhook_id = ?)", (webhook_id,))
            c.execute(f"DELETE FROM {self.deliveries} WHERE webhook_id = ?", (webhook_id,))
            removed = c.rowcount
            c.execute(f"DELETE FROM {self.hooks} WHERE id = ?", (webhook_id,))
        return removed

    def counts(self) -> dict[str, dict[str, int]]:
        """Deliveries per webhook and status."""
        out: dict[str, dict[str, int]] = {}
        with self.db.transaction() as c:
            c.execute(f"SELECT webhook_id, status, COUNT(*) FROM {self.deliveries} "
                      "GROUP BY webhook_id, status")
            for webhook_id, status, n in c.fetchall():
                out.setdefault(webhook_id, {})[status] = int(n)
        return out

    # ------------------------------------------------------------------ intake

    def record_events(self, events: Iterable[IncomingEvent], now: float | None = None) -> int:
        """One pending delivery per active matching webhook and event, in one transaction.

        A (webhook, position) pair already present is skipped, so a batch seen twice (a
        redelivered JetStream message) adds nothing. Returns the deliveries added.
        """
        now = time.time() if now is None else now
        with self.db.transaction(write=True) as c:
            c.execute(f"SELECT id, url, subjects, description, active, created_at "
                      f"FROM {self.hooks} WHERE active")
            hooks = [_webhook(r) for r in c.fetchall()]
            rows = [(delivery_id(h.id, e.position), h.id, e.position, e.subject,
                     e.body.decode(), Status.PENDING.value, 0, now, now, now)
                    for e in events for h in hooks if h.matches(e.subject)]
            if not rows:
                return 0
            c.executemany(
                f"INSERT INTO {self.deliveries} (id, webhook_id, position, subject, body, "
                "status, attempts, next_attempt_at, round_started_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (webhook_id, position) DO NOTHING", rows)
            # Both drivers sum the rows of an executemany; a skipped conflict counts 0.
            return max(c.rowcount, 0)

    # ------------------------------------------------------------------ sender

    def due_webhooks(self, now: float, limit: int = 100) -> list[str]:
        """Active webhooks whose oldest pending delivery (by position) is due at `now`."""
        with self.db.transaction() as c:
            c.execute(
                f"SELECT d.webhook_id FROM {self.deliveries} d JOIN {self.hooks} w "
                "ON w.id = d.webhook_id WHERE w.active AND d.status = 'pending' "
                "AND d.next_attempt_at <= ? AND NOT EXISTS (SELECT 1 FROM "
                f"{self.deliveries} p WHERE p.webhook_id = d.webhook_id "
                "AND p.status = 'pending' AND p.position < d.position) "
                "ORDER BY d.next_attempt_at LIMIT ?", (now, limit))
            return [r[0] for r in c.fetchall()]

    def pending(self, webhook_id: str, limit: int = 50) -> list[Outgoing]:
        """The webhook's pending deliveries in log order, ready to send (with the secret)."""
        with self.db.transaction() as c:
            c.execute(
                "SELECT d.id, d.webhook_id, w.url, w.secret, d.position, d.subject, d.body, "
                "d.attempts, d.round_started_at, d.next_attempt_at "
                f"FROM {self.deliveries} d JOIN {self.hooks} w ON w.id = d.webhook_id "
                "WHERE d.webhook_id = ? AND d.status = 'pending' AND w.active "
                "ORDER BY d.position LIMIT ?", (webhook_id, limit))
            return [Outgoing(r[0], r[1], r[2], r[3], int(r[4]), r[5], r[6].encode(), int(r[7]),
                             float(r[8]), float(r[9])) for r in c.fetchall()]

    def claim(self, delivery: str, now: float, lease: float) -> bool:
        """Take a due pending delivery for `lease` seconds; False if it is not due or taken.

        A second sender process then skips it; if this one dies mid-attempt, the delivery is
        due again when the lease ends (so it may reach the endpoint twice: at-least-once).
        """
        with self.db.transaction(write=True) as c:
            c.execute(f"UPDATE {self.deliveries} SET next_attempt_at = ? WHERE id = ? "
                      "AND status = 'pending' AND next_attempt_at <= ?",
                      (now + lease, delivery, now))
            return c.rowcount == 1

    def record_attempt(self, delivery: str, *, at: float, http_status: int | None, error: str,
                       duration_ms: float, delivered: bool, next_attempt_at: float | None
                       ) -> Status | None:
        """Record one attempt and the delivery's new state, in one transaction.

        Delivered when `delivered`; else pending until `next_attempt_at`, or dead when that
        is None. Returns the new status, or None if the delivery is no longer pending.
        """
        status = (Status.DELIVERED if delivered else
                  Status.PENDING if next_attempt_at is not None else Status.DEAD)
        with self.db.transaction(write=True) as c:
            c.execute(f"SELECT status FROM {self.deliveries} WHERE id = ?", (delivery,))
            row = c.fetchone()
            if row is None or row[0] != Status.PENDING.value:
                return None  # removed, or redelivered meanwhile: nothing to record against
            c.execute(f"SELECT COALESCE(MAX(attempt_no), 0) FROM {self.attempts} "
                      "WHERE delivery_id = ?", (delivery,))
            number = int(c.fetchone()[0]) + 1
            c.execute(f"INSERT INTO {self.attempts} (delivery_id, attempt_no, at, http_status, "
                      "error, duration_ms) VALUES (?, ?, ?, ?, ?, ?)",
                      (delivery, number, at, http_status, error, duration_ms))
            c.execute(f"UPDATE {self.deliveries} SET status = ?, attempts = attempts + 1, "
                      "next_attempt_at = ?, last_status = ?, last_error = ?, delivered_at = ? "
                      "WHERE id = ?",
                      (status.value, next_attempt_at if next_attempt_at is not None else at,
                       http_status, error, at if delivered else None, delivery))
        return status

    # ------------------------------------------------------------------ history

    def list_deliveries(self, *, webhook_id: str | None = None, status: str | None = None,
                        limit: int = 50, with_attempts: bool = True) -> list[Delivery]:
        """The latest deliveries (highest position first), optionally filtered."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValidationError(f"limit must be from 1 to {MAX_LIMIT}, got {limit}")
        where, params = [], []
        if status is not None:
            where.append("d.status = ?")
            params.append(_status(status))
        with self.db.transaction() as c:
            if webhook_id is not None:
                self._get_webhook(c, webhook_id)
                where.append("d.webhook_id = ?")
                params.append(webhook_id)
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            c.execute(f"SELECT {_DELIVERY_COLS} FROM {self.deliveries} d{clause} "
                      "ORDER BY d.position DESC, d.webhook_id LIMIT ?", (*params, limit))
            found = [_delivery(r) for r in c.fetchall()]
            if with_attempts and found:
                found = self._with_history(c, found)
        return found

    def get_delivery(self, delivery: str) -> Delivery:
        """One delivery with its attempts; NotFoundError if unknown."""
        with self.db.transaction() as c:
            c.execute(f"SELECT {_DELIVERY_COLS} FROM {self.deliveries} d WHERE d.id = ?",
                      (delivery,))
            row = c.fetchone()
            if row is None:
                raise NotFoundError(f"no webhook delivery {delivery!r}")
            return self._with_history(c, [_delivery(row)])[0]

    def _with_history(self, c: Cursor, found: list[Delivery]) -> list[Delivery]:
        ids = [d.id for d in found]
        c.execute(f"SELECT delivery_id, attempt_no, at, http_status, error, duration_ms "
                  f"FROM {self.attempts} WHERE delivery_id IN ({', '.join('?' * len(ids))}) "
                  "ORDER BY delivery_id, attempt_no", ids)
        history: dict[str, list[Attempt]] = {}
        for r in c.fetchall():
            history.setdefault(r[0], []).append(Attempt(
                int(r[1]), float(r[2]), None if r[3] is None else int(r[3]), r[4], float(r[5])))
        return [replace(d, history=tuple(history.get(d.id, ()))) for d in found]

    # ------------------------------------------------------------------ redelivery

    def redeliver(self, delivery: str, now: float | None = None) -> Delivery:
        """Put a dead delivery back in its webhook's queue, with a fresh attempt budget."""
        now = time.time() if now is None else now
        with self.db.transaction(write=True) as c:
            c.execute(f"SELECT status FROM {self.deliveries} WHERE id = ?", (delivery,))
            row = c.fetchone()
            if row is None:
                raise NotFoundError(f"no webhook delivery {delivery!r}")
            if row[0] != Status.DEAD.value:
                raise ValidationError(f"delivery {delivery} is {row[0]}: only a dead delivery "
                                      "can be redelivered")
            self._reset(c, "id = ?", (delivery,), now)
        return self.get_delivery(delivery)

    def redeliver_dead(self, webhook_id: str, now: float | None = None) -> int:
        """Put every dead delivery of a webhook back in its queue; returns how many."""
        now = time.time() if now is None else now
        with self.db.transaction(write=True) as c:
            self._get_webhook(c, webhook_id)
            return self._reset(c, "webhook_id = ? AND status = 'dead'", (webhook_id,), now)

    def _reset(self, c: Cursor, where: str, params: tuple[Any, ...], now: float) -> int:
        # Attempts restart at zero and the age limit counts from now; the history is kept.
        c.execute(f"UPDATE {self.deliveries} SET status = 'pending', attempts = 0, "
                  f"next_attempt_at = ?, round_started_at = ? WHERE {where}",
                  (now, now, *params))
        return c.rowcount


def _status(value: str) -> str:
    try:
        return Status(value).value
    except ValueError:
        raise ValidationError(f"status must be one of {', '.join(s.value for s in Status)}, "
                              f"got {value!r}") from None


def _webhook(r: Sequence[Any]) -> Webhook:
    return Webhook(r[0], r[1], tuple(json.loads(r[2])), r[3], bool(r[4]), float(r[5]))


def _delivery(r: Sequence[Any]) -> Delivery:
    return Delivery(r[0], r[1], int(r[2]), r[3], Status(r[4]), int(r[5]), float(r[6]),
                    None if r[7] is None else int(r[7]), r[8], float(r[9]),
                    None if r[10] is None else float(r[10]))


def open_webhook_store(settings: Settings) -> WebhookStore:
    """Open the (already migrated) webhook store of these settings."""
    store = WebhookStore(open_database(settings))
    try:
        store.check_tables()
    except ConfigError:
        store.close()
        raise
    return store


def migrate_webhooks(settings: Settings) -> str:
    """Create the webhook tables (the migrate step); returns a report line."""
    store = WebhookStore(open_database(settings, create=True))
    try:
        store.create_tables()
        n = len(store.list_webhooks())
    finally:
        store.close()
    return f"webhooks: ready ({settings.store}, {n} webhook{'s' if n != 1 else ''})"

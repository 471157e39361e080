"""SQLite recorder: the embedded default; one database file per application."""

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteCursor, SQLiteProcessRecorder

from kernel.store.idempotency import IdempotencyRecord, records_of

IDEMPOTENCY_TABLE = "idempotency_keys"


class SQLiteKernelRecorder(SQLiteProcessRecorder):
    """Process recorder that also records idempotency keys in the events' transaction."""

    def construct_create_table_statements(self) -> list[str]:
        """The library's tables plus the idempotency ledger."""
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {IDEMPOTENCY_TABLE} ("
            "key TEXT PRIMARY KEY, fingerprint BLOB NOT NULL, result BLOB NOT NULL, "
            "recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))",
        ]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # A second use of a key violates the primary key, so the whole save rolls back.
        for record in records_of(kwargs):
            c.execute(
                f"INSERT INTO {IDEMPOTENCY_TABLE} (key, fingerprint, result) VALUES (?,?,?)",
                (record.key, record.fingerprint, record.result),
            )
        return super()._insert_events(c, stored_events, **kwargs)

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None:
        """The record for `key`, or None if the key was never used."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT fingerprint, result FROM {IDEMPOTENCY_TABLE} WHERE key = ?", (key,)
            )
            row = c.fetchone()
        if row is None:
            return None
        return IdempotencyRecord(key, bytes(row["fingerprint"]), bytes(row["result"]))

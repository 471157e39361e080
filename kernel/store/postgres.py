"""PostgreSQL recorder: the library's locked, gap-free insert path made leaner, plus idempotency.

The stock recorder sends a batch as one array of a composite type, which psycopg adapts
row by row in Python. This one sends four typed arrays in binary (uuid[], int8[], text[],
bytea[]), which psycopg dumps in bulk. It keeps the library's transaction shape exactly:
`SET LOCAL lock_timeout`, `LOCK TABLE ... IN EXCLUSIVE MODE`, `NOTIFY`, then the insert, so
insert order equals commit order and readers tailing the log never skip an event.
"""

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from kernel.store.idempotency import IdempotencyRecord


class PostgresKernelRecorder(PostgresProcessRecorder):
    """Process recorder with a bulk-array insert and an idempotency ledger in the same txn."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "",
    ) -> None:
        base = events_table_name.removesuffix("_events")
        tracking_table_name = tracking_table_name or f"{base}_tracking"
        super().__init__(
            datastore,
            events_table_name=events_table_name,
            tracking_table_name=tracking_table_name,
        )
        schema = Identifier(datastore.schema)
        self.idempotency_table_name = f"{base}_idempotency"
        self.check_identifier_length(self.idempotency_table_name)
        table = Identifier(self.idempotency_table_name)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} (key text PRIMARY KEY, "
                "fingerprint bytea NOT NULL, result bytea NOT NULL, "
                "recorded_at timestamptz NOT NULL DEFAULT now())"
            ).format(schema, table)
        )
        self._insert_idempotency = SQL(
            "INSERT INTO {}.{} (key, fingerprint, result) VALUES (%s, %s, %s)"
        ).format(schema, table)
        self._select_idempotency = SQL(
            "SELECT fingerprint, result FROM {}.{} WHERE key = %s"
        ).format(schema, table)
        id_type = "uuid" if datastore.originator_id_type == "uuid" else "text"
        self._bulk_insert = SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::{}[], %s::int8[], %s::text[], %s::bytea[]) "
            "RETURNING notification_id"
        ).format(schema, Identifier(events_table_name), SQL(id_type))

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        record: IdempotencyRecord | None = kwargs.get("idempotency")
        if record is not None:
            # A reused key violates the primary key and the whole transaction rolls back.
            curs.execute(self._insert_idempotency, (record.key, record.fingerprint, record.result))
        super()._insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **_: Any
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self._bulk_insert,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
            prepare=True,
            binary=True,
        )

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None:
        """The record for `key`, or None if the key was never used."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._select_idempotency, (key,))
            row = curs.fetchone()
        if row is None:
            return None
        return IdempotencyRecord(key, bytes(row["fingerprint"]), bytes(row["result"]))

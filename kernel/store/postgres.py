"""PostgreSQL recorder: the library's locked, gap-free insert made leaner, plus idempotency.

The stock recorder inserts a batch with `INSERT ... SELECT FROM unnest(composite[])`. Measured
here, that statement costs ~4 ms per 100 events, while a binary COPY of the same rows into the
same indexed table costs ~1.4 ms. So this recorder, in one transaction:

1. pipelines the idempotency/tracking rows, `SET LOCAL lock_timeout`, `LOCK TABLE ... IN
   EXCLUSIVE MODE` (as the library does, so insert order equals commit order and tailing
   readers never skip an event), `NOTIFY`, and reserves a block of notification ids from the
   table's sequence (`setval(seq, nextval(seq) + n - 1)`);
2. COPYs the rows with those explicit ids;
3. commits.

Batches under COPY_THRESHOLD events skip COPY's extra round trips: the pipelined statements end
with `INSERT ... SELECT FROM unnest(uuid[], int8[], text[], bytea[]) RETURNING notification_id`
instead, so a small save is one round trip plus the commit, like the library's.

Only writers holding the table lock take ids from the sequence, so the block is the exact
range of positions the rows get, and the ids are returned like the stock recorder's.
"""

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier, Literal

from kernel.store.idempotency import IdempotencyRecord, records_of

COPY_THRESHOLD = 16


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
        self._reserve_ids = SQL("SELECT setval(pg_get_serial_sequence({}, 'notification_id'), "
                                "nextval(pg_get_serial_sequence({}, 'notification_id')) + %s - 1)"
                                ).format(*[Literal(f"{datastore.schema}.{events_table_name}")] * 2)
        self._copy_events = SQL(
            "COPY {}.{} (originator_id, originator_version, topic, state, notification_id) "
            "FROM STDIN (FORMAT BINARY)"
        ).format(schema, Identifier(events_table_name))
        # a kernel's fence (kernel.leases): first in the transaction, it locks the leases
        self._fence = SQL("SELECT {}.kernel_fence(%s, %s::int[], %s::bigint[])").format(schema)
        self._id_type = "uuid" if datastore.originator_id_type == "uuid" else "text"
        self._insert_arrays = SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::{}[], %s::int8[], %s::text[], %s::bytea[]) "
            "RETURNING notification_id"
        ).format(schema, Identifier(events_table_name), SQL(self._id_type))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int]:
        """Record the events (and any idempotency/tracking row) in one locked transaction."""
        n = len(stored_events)
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            with conn.pipeline():
                self._insert_events(curs, stored_events, **kwargs)
                if n == 0:
                    return []
                self._lock_table(curs)
                self._notify_channel(curs)
                if n < COPY_THRESHOLD:
                    curs.execute(self._insert_arrays, _columns(stored_events), prepare=True,
                                 binary=True)
                else:
                    curs.execute(self._reserve_ids, (n,), prepare=True)
            if n < COPY_THRESHOLD:
                return [int(r["notification_id"]) for r in curs.fetchall()]
            row = curs.fetchone()
            assert row is not None
            last = int(next(iter(row.values())))
            ids = range(last - n + 1, last + 1)
            with curs.copy(self._copy_events) as copy:
                copy.set_types([self._id_type, "int8", "text", "bytea", "int8"])
                for event, nid in zip(stored_events, ids, strict=True):
                    copy.write_row(
                        (event.originator_id, event.originator_version, event.topic,
                         event.state, nid)
                    )
        return list(ids)

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # A kernel that no longer holds its partitions' leases writes nothing: the fence
        # raises (kernel.leases.FENCED_SQLSTATE) and the whole transaction rolls back.
        fence = kwargs.get("fence")
        if fence is not None:
            curs.execute(self._fence, fence.arguments(), prepare=True)
        # A reused key violates the primary key and the whole transaction rolls back.
        for record in records_of(kwargs):
            curs.execute(self._insert_idempotency, (record.key, record.fingerprint, record.result))
        super()._insert_events(curs, stored_events, **kwargs)

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None:
        """The record for `key`, or None if the key was never used."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._select_idempotency, (key,))
            row = curs.fetchone()
        if row is None:
            return None
        return IdempotencyRecord(key, bytes(row["fingerprint"]), bytes(row["result"]))


def _columns(events: Sequence[StoredEvent]) -> tuple[list[Any], ...]:
    return (
        [e.originator_id for e in events],
        [e.originator_version for e in events],
        [e.topic for e in events],
        [e.state for e in events],
    )

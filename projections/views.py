"""Read-model stores: tracking recorders that write a page of row changes and its position at once.

Each view is an eventsourcing `TrackingRecorder`. `apply_page(page, tracking)` takes a page of
`(log position, domain event)` pairs and runs one transaction: it records the tracking
position (single-row tracking: a position not above the recorded one raises IntegrityError,
and everything rolls back), loads the rows the page touches, folds the events into them in
memory and upserts the changed rows. So each event changes the read model exactly once, and
a page costs a handful of statements.

SQLite: each projection has its own file, `<data_dir>/projection_<name>.db`, with the
library's `tracking` table. PostgreSQL: tables `projection_<name>` and
`projection_<name>_tracking` in the platform's database and schema.
"""

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore, SQLiteTrackingRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier, Literal
from psycopg.types.json import Jsonb

from aggregates.errors import ConfigError
from kernel.settings import Settings
from kernel.store.application import postgres_env
from kernel.store.pool_watch import watch
from projections.models import (
    FLOAT_T,
    INT_T,
    JSON_T,
    TEXT_T,
    TS_T,
    UUID_T,
    Column,
    Row,
    RowModel,
)
from projections.query import DEFAULT_LIMIT, MAX_LIMIT, check_query, coerce

_SQLITE_CHUNK = 500  # keys per `IN (...)`, well under SQLite's variable limit
_SQLITE_MOVE_TRACKING = (
    "INSERT INTO tracking (application_name, notification_id) VALUES (?, ?) "
    "ON CONFLICT (application_name) DO UPDATE SET notification_id = excluded.notification_id "
    "WHERE notification_id = ? RETURNING notification_id")

Positioned = tuple[int, Any]  # (log position, domain event)


@dataclass(frozen=True)
class Page:
    """One page of a query: its rows, and the key to pass as `after` for the next (or None)."""

    rows: list[Row]
    next_after: Any


@dataclass(frozen=True)
class JsonPage:
    """One page of a query as JSON bytes (an array of row objects), and the next `after`."""

    items: bytes
    next_after: Any


class RowView:
    """What the runner and readers use, on either store."""

    model: type[RowModel]

    def apply_page(self, page: Sequence[Positioned], tracking: Tracking,
                   expected: int | None = None) -> int:
        """Fold the (position, event) pairs, record `tracking`, in one transaction; rows changed.

        With `expected`, the page applies only if the recorded position is still `expected`
        (0: none recorded): otherwise IntegrityError, and nothing changes. A runner passes the
        position its page starts from, so a rebuild that committed meanwhile is never
        overlaid with a page it already contains.
        """
        raise NotImplementedError

    def reset(self, application_name: str) -> None:
        """Drop every row and the tracking position (for a rebuild), in one transaction."""
        raise NotImplementedError

    def replace(self, application_name: str,
                pages: Iterable[tuple[Sequence[Positioned], Tracking]]) -> int:
        """Drop every row and the tracking, then apply `pages`, all in ONE transaction.

        Readers see the old rows until it commits; a runner following the log meanwhile
        waits on the tracking row, then finds its page already applied and moves on.
        Returns the rows written.
        """
        raise NotImplementedError

    def get(self, key: Any) -> Row | None:
        """The row with this key, or None."""
        raise NotImplementedError

    def list(self, *, after: Any = None, limit: int = DEFAULT_LIMIT, **filters: Any) -> Page:
        """Rows matching the equality filters, ordered by key, after the given key."""
        raise NotImplementedError

    def list_json(self, *, after: Any = None, limit: int = DEFAULT_LIMIT,
                  **filters: Any) -> JsonPage:
        """As `list`, the rows already as a JSON array (what an API sends on): each value as
        msgspec encodes it (UUIDs and timestamps as RFC 3339 strings, JSON columns inline)."""
        page = self.list(after=after, limit=limit, **filters)
        return JsonPage(_json_encode(page.rows), page.next_after)

    def max_tracking_id(self, application_name: str) -> int | None:
        """The last position applied (the library's tracking)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the store's connections."""
        raise NotImplementedError

    def all_rows(self, **filters: Any) -> builtins.list[Row]:
        """Every row (matching the equality filters), by key."""
        rows: builtins.list[Row] = []
        after = None
        while True:
            page = self.list(after=after, limit=MAX_LIMIT, **filters)
            rows.extend(page.rows)
            if page.next_after is None:
                return rows
            after = page.next_after

    def _keys(self, page: Sequence[Positioned]) -> builtins.list[Any]:
        """The distinct keys of the rows the page touches."""
        row_key = self.model.row_key
        return list({row_key(event, position) for position, event in page})

    def _fold(self, loaded: dict[Any, Row], page: Iterable[Positioned]) -> dict[Any, Row]:
        """Fold the page into the loaded rows; returns the rows that changed."""
        model = self.model
        changed: dict[Any, Row] = {}
        for position, event in page:
            key = model.row_key(event, position)
            row = model.fold(changed.get(key) or loaded.get(key), event, position)
            if row is not None:
                changed[key] = row
        return changed


# --------------------------------------------------------------------------- SQLite

_SQLITE_TYPES = {UUID_T: "TEXT", TEXT_T: "TEXT", INT_T: "INTEGER", TS_T: "TEXT",
                 FLOAT_T: "REAL", JSON_T: "TEXT"}
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def _to_sqlite(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == UUID_T:
        return str(value)
    if kind == TS_T:
        return value.isoformat()
    if kind == JSON_T:
        return _json_encode(value).decode()
    return value


def _from_sqlite(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == UUID_T:
        return UUID(value)
    if kind == TS_T:
        return datetime.fromisoformat(value)
    if kind == JSON_T:
        return _json_decode(value)
    return value


def _sqlite_json_value(kind: str, name: str) -> str:
    """The SQL giving a stored column's JSON value as msgspec would encode the decoded one."""
    if kind == JSON_T:
        return f"json({name})"
    if kind == TS_T:  # stored by isoformat(); msgspec writes UTC as "Z"
        return f"replace({name}, '+00:00', 'Z')"
    return name


class SQLiteRowView(SQLiteTrackingRecorder, RowView):
    """A read model in its own SQLite file."""

    def __init__(self, datastore: SQLiteDatastore, model: type[RowModel]) -> None:
        self.model = model
        self.table = f"projection_{model.name}"
        super().__init__(datastore)
        names = model.column_names()
        self._types = {c.name: c.type for c in model.columns}
        self._select = f"SELECT {', '.join(names)} FROM {self.table}"
        self._upsert = (f"INSERT OR REPLACE INTO {self.table} ({', '.join(names)}) "
                        f"VALUES ({', '.join('?' * len(names))})")
        self._json_fields = ", ".join(f"'{c.name}', {_sqlite_json_value(c.type, c.name)}"
                                      for c in model.columns)

    def construct_create_table_statements(self) -> list[str]:
        """The library's tracking table, the rows table and an index per filter."""
        cols = ", ".join(
            f"{c.name} {_SQLITE_TYPES[c.type]}{'' if c.nullable else ' NOT NULL'}"
            for c in self.model.columns)
        statements = [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {self.table} ({cols}, "
            f"PRIMARY KEY ({self.model.key})) WITHOUT ROWID",
        ]
        statements += [
            f"CREATE INDEX IF NOT EXISTS {self.table}_{f} ON {self.table} ({f}, {self.model.key})"
            for f in self.model.filters
        ]
        return statements

    def apply_page(self, page: Sequence[Positioned], tracking: Tracking,
                   expected: int | None = None) -> int:
        """Fold the (position, event) pairs, record `tracking`, in one transaction; rows changed."""
        with self.datastore.transaction(commit=True) as c:
            return self._apply(c, page, tracking, expected)

    def _apply(self, c: SQLiteCursor, page: Sequence[Positioned], tracking: Tracking,
               expected: int | None = None) -> int:
        key_type = self._types[self.model.key]
        if expected is None:
            self._insert_tracking(c, tracking)
        else:
            c.execute(_SQLITE_MOVE_TRACKING, (tracking.application_name,
                                              tracking.notification_id, expected))
            if c.fetchone() is None:
                raise IntegrityError(f"{self.model.name}: position {expected} moved on before "
                                     f"{tracking.notification_id} was recorded")
        keys = self._keys(page)
        loaded: dict[Any, Row] = {}
        for i in range(0, len(keys), _SQLITE_CHUNK):
            chunk = [_to_sqlite(key_type, k) for k in keys[i:i + _SQLITE_CHUNK]]
            c.execute(f"{self._select} WHERE {self.model.key} IN "
                      f"({', '.join('?' * len(chunk))})", chunk)
            for raw in c.fetchall():
                row = self._decode(raw)
                loaded[row[self.model.key]] = row
        changed = self._fold(loaded, page)
        if changed:
            c.executemany(self._upsert, [
                [_to_sqlite(col.type, row[col.name]) for col in self.model.columns]
                for row in changed.values()])
        return len(changed)

    def reset(self, application_name: str) -> None:
        """Drop every row and the tracking position, in one transaction."""
        self.replace(application_name, ())

    def replace(self, application_name: str,
                pages: Iterable[tuple[Sequence[Positioned], Tracking]]) -> int:
        """Drop every row and the tracking, then apply `pages`, all in one transaction."""
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"DELETE FROM {self.table}")
            c.execute("DELETE FROM tracking WHERE application_name = ?", (application_name,))
            return sum(self._apply(c, page, tracking) for page, tracking in pages)

    def get(self, key: Any) -> Row | None:
        """The row with this key, or None."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"{self._select} WHERE {self.model.key} = ?",
                      (_to_sqlite(self._types[self.model.key],
                                  coerce(self.model, self.model.key, key)),))
            raw = c.fetchone()
        return None if raw is None else self._decode(raw)

    def list(self, *, after: Any = None, limit: int = DEFAULT_LIMIT, **filters: Any) -> Page:
        """Rows matching the equality filters, ordered by key, after the given key."""
        sql, params = self._page_query(self._select, after, limit, filters)
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, params)
            rows = [self._decode(raw) for raw in c.fetchall()]
        return Page(rows, rows[-1][self.model.key] if len(rows) == limit else None)

    def list_json(self, *, after: Any = None, limit: int = DEFAULT_LIMIT,
                  **filters: Any) -> JsonPage:
        """As `list`, the JSON built by SQLite itself (no row is decoded in Python)."""
        sql, params = self._page_query(self._select, after, limit, filters)
        key = self.model.key
        wrapped = (f"SELECT json_group_array(json_object({self._json_fields})), count(*), "
                   f"max({key}) FROM ({sql})")
        with self.datastore.transaction(commit=False) as c:
            c.execute(wrapped, params)
            items, count, last = c.fetchone()
        next_after = _from_sqlite(self._types[key], last) if count == limit else None
        return JsonPage(items.encode(), next_after)

    def _page_query(self, select: str, after: Any, limit: int,
                    filters: dict[str, Any]) -> tuple[str, builtins.list[Any]]:
        after, filters = check_query(self.model, limit, after, filters)
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        for name, value in filters.items():
            where.append(f"{name} = ?" if value is not None else f"{name} IS NULL")
            if value is not None:
                params.append(_to_sqlite(self._types[name], value))
        if after is not None:
            where.append(f"{self.model.key} > ?")
            params.append(_to_sqlite(self._types[self.model.key], after))
        sql = select + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {self.model.key} LIMIT ?"
        return sql, [*params, limit]

    def close(self) -> None:
        """Close the file's connections."""
        self.datastore.close()

    def _decode(self, raw: Any) -> Row:
        return {name: _from_sqlite(kind, raw[i])
                for i, (name, kind) in enumerate(self._types.items())}

    def _insert_tracking(self, c: SQLiteCursor, tracking: Tracking) -> None:
        super()._insert_tracking(c, tracking)


# --------------------------------------------------------------------------- PostgreSQL

_PG_TYPES = {UUID_T: "uuid", TEXT_T: "text", INT_T: "int8", TS_T: "timestamptz",
             FLOAT_T: "float8", JSON_T: "jsonb"}


def _json_text(value: Any) -> str:
    """JSON for psycopg's Jsonb, by msgspec (the stdlib encoder cost a sixth of a rebuild)."""
    return _json_encode(value).decode()


def _pg_values(rows: list[Row], column: Column) -> list[Any]:
    """One column of the rows, as the array `unnest` takes."""
    name = column.name
    if column.type == JSON_T:
        return [None if r[name] is None else Jsonb(r[name], _json_text) for r in rows]
    return [r[name] for r in rows]


def _pg_json_value(kind: str, name: str) -> Composed:
    """The SQL giving a column's JSON value as msgspec would encode the decoded one."""
    column = Identifier(name)
    if kind == TS_T:  # RFC 3339 in UTC with "Z", microseconds only when there are any
        return SQL("regexp_replace(to_char({} AT TIME ZONE 'UTC', "
                   "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '\\.000000Z$', 'Z')").format(column)
    if kind == UUID_T:
        return SQL("{}::text").format(column)
    return SQL("{}").format(column)


class PostgresRowView(PostgresTrackingRecorder, RowView):
    """A read model as tables in the platform's PostgreSQL database."""

    def __init__(self, datastore: PostgresDatastore, model: type[RowModel]) -> None:
        self.model = model
        self.table = f"projection_{model.name}"
        super().__init__(datastore, tracking_table_name=f"{self.table}_tracking")
        self.check_identifier_length(self.table)
        schema, table = Identifier(datastore.schema), Identifier(self.table)
        names = model.column_names()
        cols = SQL(", ").join(Identifier(n) for n in names)
        key = Identifier(model.key)
        self.sql_create_statements.append(SQL(
            "CREATE TABLE IF NOT EXISTS {}.{} ({}, PRIMARY KEY ({}))").format(
            schema, table,
            SQL(", ").join(
                SQL("{} {}{}").format(Identifier(c.name), SQL(_PG_TYPES[c.type]),
                                      SQL("" if c.nullable else " NOT NULL"))
                for c in model.columns),
            key))
        for f in model.filters:
            self.sql_create_statements.append(SQL(
                "CREATE INDEX IF NOT EXISTS {} ON {}.{} ({}, {})").format(
                Identifier(f"{self.table}_{f}"), schema, table, Identifier(f), key))
        self._select = SQL("SELECT {} FROM {}.{}").format(cols, schema, table)
        # %b: binary parameters. In text format psycopg quotes every array element with a
        # regex; for the audit index (8 columns x 5,000 rows a page) that was a third of
        # the rebuild time.
        self._load = SQL("{} WHERE {} = ANY(%b)").format(self._select, key)
        self._upsert = SQL(
            "INSERT INTO {}.{} ({}) SELECT * FROM unnest({}) ON CONFLICT ({}) DO UPDATE SET {}"
        ).format(
            schema, table, cols,
            SQL(", ").join(SQL("%b::{}[]").format(SQL(_PG_TYPES[c.type]))
                           for c in model.columns),
            key,
            SQL(", ").join(SQL("{0} = EXCLUDED.{0}").format(Identifier(n))
                           for n in names if n != model.key))
        self._delete_rows = SQL("DELETE FROM {}.{}").format(schema, table)
        self._copy_in = SQL("COPY {}.{} ({}) FROM STDIN (FORMAT BINARY)").format(
            schema, table, cols)
        self._move_tracking = SQL(
            "INSERT INTO {0}.{1} AS t (application_name, notification_id) VALUES (%s, %s) "
            "ON CONFLICT (application_name) DO UPDATE SET notification_id = "
            "EXCLUDED.notification_id WHERE t.notification_id = %s RETURNING notification_id"
        ).format(schema, Identifier(self.tracking_table_name))
        self._delete_tracking = SQL("DELETE FROM {}.{} WHERE application_name = %s").format(
            schema, Identifier(self.tracking_table_name))

    def apply_page(self, page: Sequence[Positioned], tracking: Tracking,
                   expected: int | None = None) -> int:
        """Fold the (position, event) pairs, record `tracking`, in one transaction; rows changed."""
        with self.datastore.transaction(commit=True) as curs:
            return self._apply(curs, page, tracking, expected)

    def _apply(self, curs: Cursor[DictRow], page: Sequence[Positioned],
               tracking: Tracking, expected: int | None = None,
               written: set[Any] | None = None) -> int:
        if expected is None:
            self._insert_tracking(curs, tracking)
        else:
            # Waits for a rebuild holding the row, then compares with what it committed.
            curs.execute(self._move_tracking, (tracking.application_name,
                                               tracking.notification_id, expected),
                         prepare=True)
            if curs.fetchone() is None:
                raise IntegrityError(f"{self.model.name}: position {expected} moved on before "
                                     f"{tracking.notification_id} was recorded")
        keys = self._keys(page)
        if written is not None:  # a rebuild: only rows it wrote itself can exist
            keys = [k for k in keys if k in written]
        loaded: dict[Any, Row] = {}
        if keys:
            curs.execute(self._load, (keys,), prepare=True, binary=True)
            for row in curs.fetchall():
                loaded[row[self.model.key]] = dict(row)
        changed = self._fold(loaded, page)
        rows = list(changed.values())
        if written is not None:
            # New rows go in by binary COPY (the array upsert's dumping cost most of a
            # rebuild); rows an earlier page wrote are upserted as usual.
            key = self.model.key
            fresh = [r for r in rows if r[key] not in written]
            rows = [r for r in rows if r[key] in written]
            if fresh:
                self._copy(curs, fresh)
                written.update(r[key] for r in fresh)
        if rows:
            curs.execute(self._upsert, [_pg_values(rows, c) for c in self.model.columns],
                         prepare=True, binary=True)
        return len(changed)

    def _copy(self, curs: Cursor[DictRow], rows: list[Row]) -> None:
        names = self.model.column_names()
        json_columns = {c.name for c in self.model.columns if c.type == JSON_T}
        with curs.copy(self._copy_in) as copy:
            copy.set_types([_PG_TYPES[c.type] for c in self.model.columns])
            for r in rows:
                copy.write_row([
                    Jsonb(r[n], _json_text) if n in json_columns and r[n] is not None else r[n]
                    for n in names])

    def reset(self, application_name: str) -> None:
        """Drop every row and the tracking position, in one transaction."""
        self.replace(application_name, ())

    def replace(self, application_name: str,
                pages: Iterable[tuple[Sequence[Positioned], Tracking]]) -> int:
        """Drop every row and the tracking, then apply `pages`, all in one transaction."""
        with self.datastore.transaction(commit=True) as curs:
            # The tracking row first: a runner that wants it waits here from the start.
            curs.execute(self._delete_tracking, (application_name,))
            curs.execute(self._delete_rows)
            written: set[Any] = set()
            return sum(self._apply(curs, page, tracking, written=written)
                       for page, tracking in pages)

    def get(self, key: Any) -> Row | None:
        """The row with this key, or None."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("{} WHERE {} = %s").format(
                self._select, Identifier(self.model.key)),
                (coerce(self.model, self.model.key, key),))
            row = curs.fetchone()
        return None if row is None else dict(row)

    def list(self, *, after: Any = None, limit: int = DEFAULT_LIMIT, **filters: Any) -> Page:
        """Rows matching the equality filters, ordered by key, after the given key."""
        query, params = self._page_query(after, limit, filters)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query, params)
            rows = [dict(r) for r in curs.fetchall()]
        return Page(rows, rows[-1][self.model.key] if len(rows) == limit else None)

    def list_json(self, *, after: Any = None, limit: int = DEFAULT_LIMIT,
                  **filters: Any) -> JsonPage:
        """As `list`, the JSON built by PostgreSQL itself (no row is decoded in Python)."""
        query, params = self._page_query(after, limit, filters)
        key = Identifier(self.model.key)
        fields = SQL(", ").join(
            SQL("{}, {}").format(Literal(c.name), _pg_json_value(c.type, c.name))
            for c in self.model.columns)
        wrapped = SQL("SELECT coalesce(json_agg(json_build_object({}) ORDER BY {}), '[]')::text "
                      "AS items, count(*) AS n, (array_agg({} ORDER BY {} DESC))[1] AS last "
                      "FROM ({}) AS page").format(
            fields, key, key, key, query)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(wrapped, params)
            row = curs.fetchone()
        assert row is not None
        return JsonPage(row["items"].encode(), row["last"] if row["n"] == limit else None)

    def _page_query(self, after: Any, limit: int,
                    filters: dict[str, Any]) -> tuple[Composed, builtins.list[Any]]:
        after, filters = check_query(self.model, limit, after, filters)
        where: builtins.list[Composed] = []
        params: builtins.list[Any] = []
        for name, value in filters.items():
            if value is None:
                where.append(SQL("{} IS NULL").format(Identifier(name)))
            else:
                where.append(SQL("{} = %s").format(Identifier(name)))
                params.append(value)
        key = Identifier(self.model.key)
        if after is not None:
            where.append(SQL("{} > %s").format(key))
            params.append(after)
        query = self._select
        if where:
            query = SQL("{} WHERE {}").format(query, SQL(" AND ").join(where))
        return SQL("{} ORDER BY {} LIMIT %s").format(query, key), [*params, limit]

    def close(self) -> None:
        """Close the pool."""
        self.datastore.close()

    def _insert_tracking(self, curs: Cursor[DictRow], tracking: Tracking) -> None:
        super()._insert_tracking(curs, tracking)


# --------------------------------------------------------------------------- opening


def sqlite_view_path(settings: Settings, model: type[RowModel]) -> Path:
    """The file of a projection on SQLite."""
    return Path(settings.data_dir) / f"projection_{model.name}.db"


def open_view(model: type[RowModel], settings: Settings, *,
              create_table: bool = False) -> RowView:
    """Open a projection's store; `create_table=True` creates its tables (the migrate step)."""
    view: SQLiteRowView | PostgresRowView
    if settings.store == "sqlite":
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        view = SQLiteRowView(SQLiteDatastore(str(sqlite_view_path(settings, model)),
                                             lock_timeout=10), model)
    else:
        env = postgres_env(settings)
        view = PostgresRowView(PostgresDatastore(
            env["POSTGRES_DBNAME"], env["POSTGRES_HOST"], env["POSTGRES_PORT"],
            env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], schema=settings.postgres_schema,
            pool_size=2, max_overflow=2, max_waiting=100, lock_timeout=10,
            connect_timeout=settings.postgres_connect_timeout,
            pre_ping=True), model)  # (as the applications': kernel.store.application)
        watch(view.datastore)
    if create_table:
        view.create_table()
    else:
        try:
            view.max_tracking_id("__migration__")
        except Exception as e:
            view.close()
            raise ConfigError(f"projection {model.name} is not migrated "
                              f"({e.__class__.__name__}); run `cloudkernel migrate` first"
                              ) from None
    return view

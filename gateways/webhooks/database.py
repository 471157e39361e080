"""The connection under the webhook store: one SQLite file, or the platform's PostgreSQL schema.

Both speak the same SQL (written with `?` placeholders, turned into `%s` for psycopg), so the
store's queries are written once. Every call is one transaction.
"""

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg_pool import ConnectionPool

from aggregates.errors import ConfigError
from kernel.settings import Settings

SQLITE_FILE = "webhooks.db"


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any:
        """Run one statement."""

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any:
        """Run one statement for each parameter row."""

    def fetchall(self) -> list[Any]:
        """Every remaining row."""

    def fetchone(self) -> Any:
        """The next row, or None."""


class Database:
    """A transaction factory over one store, with the table names it needs."""

    kind: str

    def table(self, name: str) -> str:
        """The qualified name of one of the webhook tables."""
        raise NotImplementedError

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Cursor]:
        """A cursor in one transaction: committed on success, rolled back on an error."""
        raise NotImplementedError
        yield  # pragma: no cover

    def close(self) -> None:
        """Close the connections."""
        raise NotImplementedError


class SQLiteDatabase(Database):
    """One SQLite file; one connection shared by the executor threads under a lock."""

    kind = "sqlite"

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        if not create and not path.exists():
            raise ConfigError(f"webhook store {path} does not exist; run `cloudkernel migrate`")
        try:
            # mode=rw: opening must not create the file; only the migrate step does.
            uri = f"file:{path}?mode={'rwc' if create else 'rw'}"
            self._conn = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the webhook store {path}: {e}") from None
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA busy_timeout = 10000")

    def table(self, name: str) -> str:
        """Tables live in the file's main schema."""
        return name

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Cursor]:
        """BEGIN IMMEDIATE for writes, so two writers wait for each other instead of failing."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cur
            except BaseException:
                self._conn.rollback()
                raise
            else:
                self._conn.commit()
            finally:
                cur.close()

    def enable_wal(self) -> None:
        """WAL lets the CLI read while `webhooks serve` writes (persistent in the file)."""
        with self._lock:
            self._conn.execute("PRAGMA journal_mode = WAL")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


class _PgCursor:
    """A psycopg cursor that takes `?` placeholders."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed."""
        return self._cur.rowcount

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement."""
        return self._cur.execute(sql.replace("?", "%s"), params)  # type: ignore[call-overload]

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any:
        """Run one statement for each parameter row (pipelined by psycopg)."""
        return self._cur.executemany(sql.replace("?", "%s"), params)  # type: ignore[arg-type]

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        return self._cur.fetchall()

    def fetchone(self) -> Any:
        """The next row, or None."""
        return self._cur.fetchone()


class PostgresDatabase(Database):
    """Tables in the platform's database and schema, through a small connection pool."""

    kind = "postgres"

    def __init__(self, settings: Settings, *, pool_size: int = 4) -> None:
        self.schema = settings.postgres_schema
        self._schema_sql = '"' + self.schema.replace('"', '""') + '"'
        try:
            self._pool = ConnectionPool(
                settings.postgres_dsn, min_size=1, max_size=pool_size, open=True,
                timeout=settings.postgres_connect_timeout + 5, name="webhooks",
                # A connection broken by a server restart is replaced, not handed out.
                check=ConnectionPool.check_connection,
                kwargs={"connect_timeout": settings.postgres_connect_timeout})
            self._pool.wait(timeout=settings.postgres_connect_timeout + 5)
        except Exception as e:
            if hasattr(self, "_pool"):
                self._pool.close()
            raise ConfigError(f"setting postgres_dsn: cannot connect for the webhook store: "
                              f"{type(e).__name__}: {e}") from None

    def table(self, name: str) -> str:
        """`"<schema>".<name>`."""
        return f"{self._schema_sql}.{name}"

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Cursor]:
        """A pooled connection; the pool commits on success and rolls back on an error."""
        with self._pool.connection() as conn, conn.cursor() as cur:
            yield _PgCursor(cur)

    def create_schema(self) -> None:
        """The platform's schema, if missing (migrate creates it too; this keeps us standalone)."""
        with self._pool.connection() as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema_sql}")  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the pool."""
        self._pool.close()


def open_database(settings: Settings, *, create: bool = False) -> Database:
    """The configured store: `<data_dir>/webhooks.db`, or the platform's PostgreSQL schema."""
    if settings.store == "sqlite":
        if create:
            Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        return SQLiteDatabase(Path(settings.data_dir) / SQLITE_FILE, create=create)
    return PostgresDatabase(settings)

"""Schema creation: the one place tables are created; every process runs with CREATE_TABLE=n."""

from pathlib import Path

import psycopg
from psycopg import sql

from aggregates.errors import ConfigError
from kernel.leases import LeaseTable
from kernel.settings import Settings
from kernel.store.application import APPLICATIONS, open_application


def migrate(settings: Settings) -> list[str]:
    """Create the schema and the platform applications' tables; safe to run again. Returns a
    report. `kernel.bootstrap.migrations` adds the ACL's, the read models' and the webhooks'."""
    report: list[str] = []
    if settings.store == "sqlite":
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    else:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(settings.postgres_schema)
                )
            )
    if settings.store == "postgres":
        table = LeaseTable(settings.postgres_dsn, settings.postgres_schema,
                           partitions=settings.kernel_partitions,
                           period=settings.lease_seconds)
        try:
            table.create()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        finally:
            table.close()
        report.append(f"leases: {settings.kernel_partitions} partitions")
    for cls in APPLICATIONS:
        app = open_application(cls, settings, create_table=True)
        try:
            head = app.recorder.max_notification_id() or 0
        finally:
            app.close()
        report.append(f"{cls.name}: ready ({settings.store}, log head at {head})")
    return report

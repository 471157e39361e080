"""Schema creation: the one place tables are created; every process runs with CREATE_TABLE=n."""

from pathlib import Path

import psycopg
from psycopg import sql

from kernel.settings import Settings
from kernel.store.application import APPLICATIONS, PlatformApplication, open_application


def migrate(settings: Settings) -> list[str]:
    """Create the schema and every application's tables; safe to run again. Returns a report."""
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
    for cls in APPLICATIONS:
        app = open_application(cls, settings, create_table=True)
        try:
            head = app.recorder.max_notification_id() or 0
        finally:
            app.close()
        report.append(f"{cls.name}: ready ({settings.store}, log head at {head})")
    # The ACL service's own log (gateways.acl), apart from the platform's; it makes ROOT.
    from gateways.acl.service import AclService

    acl = AclService.open(settings, create_table=True)
    try:
        report.append(f"{acl.app.name}: ready ({settings.store}, log head at "
                      f"{acl.app.recorder.max_notification_id() or 0})")
    finally:
        acl.close()
    # Read models: their tables and tracking rows (projections import the store, not this).
    from projections.catalog import MODELS
    from projections.views import open_view

    for model in MODELS.values():
        view = open_view(model, settings, create_table=True)
        try:
            position = view.max_tracking_id(PlatformApplication.name) or 0
        finally:
            view.close()
        report.append(f"projection {model.name}: ready (at position {position})")
    return report

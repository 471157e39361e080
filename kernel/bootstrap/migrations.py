"""Every table the platform and its parts need, made in one explicit step (`cloudkernel migrate`,
and `up` before it starts): every process runs with CREATE_TABLE=n."""

from gateways.webhooks.store import migrate_webhooks
from kernel.settings import Settings
from kernel.store.application import PlatformApplication
from kernel.store.migrate import migrate
from projections.catalog import MODELS
from projections.views import open_view
from services.acl.service import AclService


def migrate_all(settings: Settings) -> list[str]:
    """The platform's applications, the ACL service's log, the read models and the webhook
    deliveries; safe to run again. Returns a report, a line each."""
    report = migrate(settings)
    # The ACL service's own log (services.acl), apart from the platform's; it makes ROOT.
    acl = AclService.open(settings, create_table=True)
    try:
        report.append(f"{acl.app.name}: ready ({settings.store}, log head at "
                      f"{acl.app.recorder.max_notification_id() or 0})")
    finally:
        acl.close()
    # Read models: their tables and tracking rows.
    for model in MODELS.values():
        view = open_view(model, settings, create_table=True)
        try:
            position = view.max_tracking_id(PlatformApplication.name) or 0
        finally:
            view.close()
        report.append(f"projection {model.name}: ready (at position {position})")
    report.append(migrate_webhooks(settings))
    return report

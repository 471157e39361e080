"""The ACL's own event-sourced application: its own log (SQLite file or PostgreSQL table)
and its own public subjects, apart from the platform's."""

from kernel.settings import Settings
from kernel.store.application import KernelApplication, open_application

ACL_SUBJECT_PREFIX = "cloudkernel.acl.events."
ACL_EVENTS_STREAM = "ACL_EVENTS"


class AclApplication(KernelApplication):
    """The ACL log: domains, accounts, users, keys, rules and denials."""

    name = "acl"


def open_acl_application(settings: Settings, *, create_table: bool = False) -> KernelApplication:
    """Open the ACL application on the configured store (migrated unless create_table)."""
    return open_application(AclApplication, settings, create_table=create_table)

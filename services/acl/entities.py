"""AclDirectory: the ACL's entities in memory, kept current by following the ACL log.

Each refresh reads only the notifications after the last one seen (one query when nothing
changed) and reloads the aggregates they touched. Denials are not loaded: nothing reads them.
"""

import threading
from uuid import UUID

from kernel.store.application import KernelApplication
from services.acl.model import AclAccount, AclApiKey, AclDomain, AclRule, AclUser

_SKIPPED_PREFIX = "acl_audit."


class AclDirectory:
    """Domains by path, accounts by name, users by name, keys by id, and the active rules."""

    def __init__(self, app: KernelApplication):
        self.app = app
        self.position = 0
        self.domains: dict[str, AclDomain] = {}
        self.accounts: dict[str, AclAccount] = {}
        self.users: dict[str, AclUser] = {}
        self.keys: dict[str, AclApiKey] = {}
        self.rules: dict[UUID, AclRule] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Catch up with the log."""
        with self._lock:
            while True:
                notes = self.app.recorder.select_notifications(
                    start=self.position, limit=1000, inclusive_of_start=False)
                if not notes:
                    return
                touched = {n.originator_id for n in notes
                           if not n.topic.startswith(_SKIPPED_PREFIX)}
                for originator_id in touched:
                    self._load(UUID(str(originator_id)))
                self.position = notes[-1].id

    def _load(self, originator_id: UUID) -> None:
        agg: object = self.app.repository.get(originator_id)
        if isinstance(agg, AclDomain):
            self.domains[agg.path] = agg
        elif isinstance(agg, AclAccount):
            self.accounts[agg.name] = agg
        elif isinstance(agg, AclUser):
            self.users[agg.username] = agg
        elif isinstance(agg, AclApiKey):
            self.keys[agg.key_id] = agg
        elif isinstance(agg, AclRule):
            if agg.removed:
                self.rules.pop(agg.id, None)
            else:
                self.rules[agg.id] = agg

    def accounts_under(self, domain: AclDomain) -> frozenset[str]:
        """Names of the accounts in `domain` and every domain below it."""
        return frozenset(a.name for a in self.accounts.values()
                         if domain.contains(a.domain_path))

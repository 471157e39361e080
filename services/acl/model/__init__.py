"""The ACL service's entities: domains, accounts, users, API keys, rules and denials.

They live in their own event-sourced application (its own log and subjects), apart from the
platform's aggregates.
"""

from services.acl.model.account import AclAccount
from services.acl.model.api_key import AclApiKey
from services.acl.model.audit import AccessDenial
from services.acl.model.domain import AclDomain
from services.acl.model.rule import AclRule
from services.acl.model.user import AclUser

ACL_AGGREGATES = (AclDomain, AclAccount, AclUser, AclApiKey, AclRule, AccessDenial)

__all__ = ["ACL_AGGREGATES", "AccessDenial", "AclAccount", "AclApiKey", "AclDomain", "AclRule",
           "AclUser"]

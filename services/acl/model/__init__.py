"""The ACL service's entities: domains, accounts, users, API keys, rules and denials.

They live in their own event-sourced application (its own log and subjects), apart from the
platform's aggregates.
"""

from aggregates.acl.account import AclAccount
from aggregates.acl.api_key import AclApiKey
from aggregates.acl.audit import AccessDenial
from aggregates.acl.domain import AclDomain
from aggregates.acl.rule import AclRule
from aggregates.acl.user import AclUser

ACL_AGGREGATES = (AclDomain, AclAccount, AclUser, AclApiKey, AclRule, AccessDenial)

__all__ = ["ACL_AGGREGATES", "AccessDenial", "AclAccount", "AclApiKey", "AclDomain", "AclRule",
           "AclUser"]

"""The ACL service: its own event-sourced application, secrets, LDAP login and AclAccess."""

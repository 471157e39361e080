"""Who may mint and redeem console tickets: vm.console as any vm.* command on owned VMs,
console.redeem for root admins (and the console service's keyring key) only."""

import pytest

from aggregates.errors import ForbiddenError
from tests.unit.acl.conftest import Acl, denials
from tests.unit.acl.test_access import login, signed


def test_vm_console_is_a_tenant_command_on_its_own_vms_only(acl: Acl) -> None:
    alice, dadmin, root = login(acl, "alice"), login(acl, "dadmin"), login(acl, "root")
    acl.access.authorize(alice, "vm.console", owner="mine_acct")
    acl.access.authorize(dadmin, "vm.console", owner="sub_acct")
    acl.access.authorize(root, "vm.console", owner="sib_acct")
    with pytest.raises(ForbiddenError, match="its own account mine_acct"):
        acl.access.authorize(alice, "vm.console", owner="sib_acct")
    with pytest.raises(ForbiddenError, match="without naming the owning account"):
        acl.access.authorize(alice, "vm.console")
    assert ("alice", "vm.console", "sib_acct") in denials(acl)


def test_console_redeem_is_root_only_and_no_rule_grants_it(acl: Acl) -> None:
    alice, dadmin, root = login(acl, "alice"), login(acl, "dadmin"), login(acl, "root")
    acl.access.authorize(root, "console.redeem")
    acl.service.add_rule(target_kind="account", target="mine_acct", effect="allow",
                         pattern="console.*")
    for tenant in (alice, dadmin):
        for owner in (None, "mine_acct"):
            with pytest.raises(ForbiddenError, match="only a root admin may"):
                acl.access.authorize(tenant, "console.redeem", owner=owner)
    assert ("alice", "console.redeem", None) in denials(acl)


def test_read_only_and_scoped_keys_may_not_mint(acl: Acl) -> None:
    ro, ro_secret = acl.service.create_key("alice", read_only=True)
    principal = acl.access.authenticate(signed(acl, ro.key_id, ro_secret))
    with pytest.raises(ForbiddenError, match="read-only"):
        acl.access.authorize(principal, "vm.console", owner="mine_acct")
    scoped, secret = acl.service.create_key("alice", scope=("vm.start",))
    principal = acl.access.authenticate(signed(acl, scoped.key_id, secret))
    with pytest.raises(ForbiddenError, match=r"scoped to vm\.start"):
        acl.access.authorize(principal, "vm.console", owner="mine_acct")
    console, secret = acl.service.create_key("alice", scope=("vm.console",))
    principal = acl.access.authenticate(signed(acl, console.key_id, secret))
    acl.access.authorize(principal, "vm.console", owner="mine_acct")

"""`cloudkernel acl ...`: the tree, users, keys shown once, limits, rules, login, bad input."""

import io
import re
from pathlib import Path

import pytest

from gateways.cli.main import main


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no cloudkernel.toml here
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    assert main(["migrate"]) == 0
    return tmp_path / "data"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_acl_commands(data_dir: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    capsys.readouterr()
    assert run(capsys, "acl", "domain", "create", "eng")[0] == 0
    assert run(capsys, "acl", "account", "create", "web", "--domain", "ROOT/eng")[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
    code, out, _ = run(capsys, "acl", "user", "create", "bob", "--account", "web", "--role",
                       "user", "--password-stdin")
    assert code == 0 and "created user bob (user) in account web" in out
    code, out, _ = run(capsys, "acl", "key", "create", "bob", "--scope", "vm.*",
                       "--expires-in", "3")
    key_id = re.search(r"^key id: (ak_[0-9a-f]{16})$", out, re.M)
    secret = re.search(r"^secret: ([0-9a-f]{64})$", out, re.M)
    assert code == 0 and key_id and secret
    code, out, _ = run(capsys, "acl", "key", "list")
    assert code == 0 and key_id[1] in out and secret[1] not in out and "active" in out
    assert secret[1].encode() not in (data_dir / "acl.db").read_bytes()
    code, out, _ = run(capsys, "acl", "key", "revoke", key_id[1])
    assert (code, out.strip()) == (0, f"key {key_id[1]} (bob) revoked")
    code, out, _ = run(capsys, "acl", "limits", "set", "account", "web", "max_vms=4")
    assert (code, out.strip()) == (0, "account web limits: max_vms=4")
    assert run(capsys, "acl", "rule", "add", "deny", "vm.destroy", "--role", "user")[0] == 0
    code, out, _ = run(capsys, "acl", "rule", "list")
    assert "role  user    deny    vm.destroy" in out
    _, out, _ = run(capsys, "acl", "domain", "list")
    assert "ROOT/eng" in out and "ROOT" in out
    _, out, _ = run(capsys, "acl", "account", "list")
    assert re.search(r"^web\s+ROOT/eng\s+max_vms=4$", out, re.M)
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
    code, out, _ = run(capsys, "acl", "login", "bob", "--password-stdin")
    assert code == 0 and out.startswith("ckt1.")
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong-pass\n"))
    code, _, err = run(capsys, "acl", "login", "bob", "--password-stdin")
    assert code == 2 and "invalid credentials" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["acl", "domain", "create", "a/b"], "domain name must be"),
    (["acl", "domain", "create", "x", "--parent", "ROOT/nope"], "no domain 'ROOT/nope'"),
    (["acl", "account", "create", "acme", "--domain", "ROOT/none"], "no domain"),
    (["acl", "user", "create", "u", "--account", "ghost", "--role", "user"], "no account"),
    (["acl", "key", "create", "ghost"], "no user 'ghost'"),
    (["acl", "key", "revoke", "ak_0"], "no ACL key"),
    (["acl", "limits", "set", "domain", "ROOT", "max_cats=3"], "unknown limit 'max_cats'"),
    (["acl", "limits", "set", "domain", "ROOT", "max_vms"], "give NAME=N"),
    (["acl", "rule", "add", "deny", "vm deploy", "--role", "user"], "command pattern"),
])
def test_bad_input_exits_2_naming_the_problem(data_dir: Path, capsys: pytest.CaptureFixture[str],
                                              argv: list[str], message: str) -> None:
    capsys.readouterr()
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err

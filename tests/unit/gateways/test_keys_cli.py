"""`cloudkernel keys create|list|revoke`: exit codes, secrets shown once and never listed."""

import re
from pathlib import Path

import pytest

from gateways.access import Keyring
from gateways.cli.main import main


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no cloudkernel.toml here
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_list_revoke(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "create", "--actor", "billing", "--role", "integrator",
                       "--allow", "operation.*", "--allow", "inventory.load",
                       "--expires-in", "30")
    assert code == 0
    key_id = re.search(r"^key id: (ck_[0-9a-f]{16})$", out, re.M)
    secret = re.search(r"^secret: ([0-9a-f]{64})$", out, re.M)
    assert key_id and secret
    stored = Keyring(data_dir / "keys.json").entries()
    assert [(k.id, k.secret, k.allow) for k in stored] == [
        (key_id[1], secret[1], ("operation.*", "inventory.load"))]
    code, out, _ = run(capsys, "keys", "create", "--actor", "ops", "--role", "admin")
    assert code == 0
    admin_secret = re.search(r"^secret: (\S+)$", out, re.M)
    assert admin_secret

    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    assert secret[1] not in out and admin_secret[1] not in out
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ACTOR", "ROLE", "ALLOWS", "CREATED", "EXPIRES", "STATUS"]
    billing = next(line for line in lines if key_id[1] in line)
    assert "billing" in billing and "operation.* inventory.load" in billing
    assert billing.endswith("active")

    code, out, _ = run(capsys, "keys", "revoke", key_id[1])
    assert (code, out.strip()) == (0, f"key {key_id[1]} (billing) revoked")
    code, out, _ = run(capsys, "keys", "revoke", key_id[1])
    assert code == 0 and "already revoked" in out
    _, out, _ = run(capsys, "keys", "list")
    assert next(line for line in out.splitlines() if key_id[1] in line).endswith("revoked")


@pytest.mark.parametrize(("argv", "message"), [
    (["keys", "create", "--actor", "x", "--role", "integrator"], "needs at least one --allow"),
    (["keys", "create", "--actor", "x", "--role", "admin", "--allow", "a.b"],
     "only to integrator keys"),
    (["keys", "create", "--actor", "x y", "--role", "admin"], "actor must be"),
    (["keys", "create", "--actor", "x", "--role", "admin", "--expires-in", "-1"],
     "--expires-in"),
    (["keys", "revoke", "ck_0000"], "no key 'ck_0000'"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(
        data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "secret" not in out
    assert not (data_dir / "keys.json").exists()


def test_argument_errors_exit_2(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["keys", "create", "--actor", "x", "--role", "root"])
    assert info.value.code == 2
    assert "invalid choice: 'root'" in capsys.readouterr().err
    assert main(["keys"]) == 2  # no action: help, exit 2


def test_an_allow_pattern_matching_no_command_is_warned_about(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "create", "--actor", "x", "--role", "integrator",
                       "--allow", "operation.cancle", "operation.cancel")
    assert code == 0
    assert "--allow 'operation.cancle' matches no command" in err
    assert "'operation.cancel'" not in err


def test_list_without_keys(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0 and "no keys in" in out

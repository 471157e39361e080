"""The services read model on SQLite, the admin API's routes over it, and the CLI."""

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import pytest

from aggregates.service import ServiceRegistration
from gateways.cli.main import main
from kernel.bootstrap import PLATFORM_HANDLERS, open_platform
from kernel.cloud.services import DeregisterService, DisableService, RegisterService
from kernel.commands import CommandService
from kernel.settings import Settings, load_settings
from kernel.store.testing import scratch_application
from projections.runner import ProjectionRunner
from projections.services import ServiceModel
from projections.views import open_view
from tests.unit.api.conftest import Api, api_env, run_api  # noqa: F401 - fixtures

SPEC: dict[str, Any] = {"name": "ec2", "version": "1.0",
                        "endpoints": {"http": "http://127.0.0.1:8482/"},
                        "consumes": ["cloudkernel.events.vm.>"], "description": "EC2 API"}


def test_the_read_model_follows_registration_switch_and_deregistration(tmp_path: Path) -> None:
    app = scratch_application()
    service = CommandService(app, PLATFORM_HANDLERS)
    view = open_view(ServiceModel, Settings(data_dir=tmp_path, store="sqlite"),
                     create_table=True)
    runner = ProjectionRunner(app, view)
    try:
        service.execute(RegisterService(**SPEC), idempotency_key="a", actor="service:ec2")
        runner.run_once()
        [first] = view.all_rows()
        row: dict[str, Any] | None = first
        assert row is not None and row["id"] == ServiceRegistration.create_id("ec2")
        assert (row["name"], row["version"], row["state"], row["enabled"]) == \
            ("ec2", "1.0", "Enabled", True)
        assert row["endpoints"] == {"http": "http://127.0.0.1:8482/"}
        assert row["consumes"] == ["cloudkernel.events.vm.>"] and row["publishes"] == []
        assert row["revision"] == 1 and row["registered_at"] == row["updated_at"]

        service.execute(RegisterService(**{**SPEC, "version": "1.1"}), idempotency_key="b",
                        actor="service:ec2")
        service.execute(DisableService(name="ec2", reason="maintenance"), idempotency_key="c")
        runner.run_once()
        row = view.get(first["id"])
        assert row is not None
        assert (row["version"], row["state"], row["enabled"], row["disabled_reason"],
                row["revision"]) == ("1.1", "Disabled", False, "maintenance", 3)
        assert row["updated_at"] > row["registered_at"]
        assert [r["name"] for r in view.list(state="Disabled").rows] == ["ec2"]

        service.execute(DeregisterService(name="ec2"), idempotency_key="d")
        service.execute(RegisterService(**SPEC), idempotency_key="e", actor="service:ec2")
        runner.run_once()
        row = view.get(first["id"])
        assert row is not None and row["state"] == "Enabled" and row["enabled"] is True
        assert row["version"] == "1.0" and row["disabled_reason"] == ""
    finally:
        view.close()


def test_the_admin_api_lists_and_gets_services_by_name_or_id(run_api: Any) -> None:  # noqa: F811
    async def scenario(api: Api) -> None:
        body = json.dumps(SPEC).encode()
        status, done = await api.json("POST", "/v1/commands/service.register", body,
                                      idem="reg-ec2")
        assert status == 200, done
        position = max(done["positions"])
        status, page = await api.json("GET", f"/v1/services?wait_for={position}")
        assert status == 200, page
        [row] = page["items"]
        assert row["name"] == "ec2" and row["enabled"] is True and row["version"] == "1.0"
        status, by_name = await api.json("GET", "/v1/services/ec2")
        assert status == 200 and by_name == row
        status, by_id = await api.json("GET", f"/v1/services/{row['id']}")
        assert status == 200 and by_id == row
        status, missing = await api.json("GET", "/v1/services/nobody")
        assert status == 404 and "nobody" in json.dumps(missing), missing
        status, missing = await api.json("GET", "/v1/services/Not%20A%20Name")
        assert status == 404, missing
        status, page = await api.json("GET", "/v1/services?state=Disabled")
        assert status == 200 and page["items"] == []
        status, doc = await api.json("GET", "/v1/openapi.json")
        assert status == 200 and "/v1/services" in doc["paths"]
        r = await api.call("GET", "/v1/services", sign_it=False)
        assert r.status == 401

    run_api(scenario)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Settings:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLOUDKERNEL_NATS_URLS", "nats://127.0.0.1:9")  # nobody listens
    assert main(["migrate"]) == 0
    capsys.readouterr()
    loaded = load_settings()
    platform = open_platform(loaded)
    try:
        platform.commands.execute(RegisterService(**SPEC), idempotency_key="r",
                                  actor="service:ec2")
    finally:
        platform.close()
    return loaded


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_lists_shows_and_switches_services(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "services")
    assert code == 0 and "ec2" in out and "Enabled" in out and "http=http://127.0.0.1:8482/" in out
    assert "NATS at nats://127.0.0.1:9 is not reachable" in out
    code, out, _ = cli(capsys, "services", "list", "--json")
    [row] = json.loads(out)
    assert code == 0 and row["name"] == "ec2" and row["live"] is None and row["liveness"]
    code, out, _ = cli(capsys, "services", "disable", "ec2", "--reason", "maintenance",
                       "--actor", "ops")
    assert code == 0 and "service ec2: disabled" in out
    code, out, _ = cli(capsys, "services", "disable", "ec2", "--reason", "again")
    assert code == 0 and "already disabled" in out
    code, out, _ = cli(capsys, "services", "show", "ec2")
    assert code == 0 and "Disabled (maintenance)" in out and "consumes  cloudkernel.events.vm.>" \
        in out and "live instances unknown" in out
    code, out, _ = cli(capsys, "services", "enable", "ec2", "--json")
    assert code == 0 and json.loads(out)["enabled"] is True
    code, out, _ = cli(capsys, "services", "show", "ec2", "--json")
    shown = json.loads(out)
    assert shown["state"] == "Enabled" and UUID(shown["id"]) == \
        ServiceRegistration.create_id("ec2")


@pytest.mark.parametrize(("argv", "message"), [
    (("services", "show", "nobody"), "no service 'nobody'"),
    (("services", "enable", "nobody"), "no service 'nobody'"),
    (("services", "show", "Bad"), "lowercase letter"),
    (("services", "disable", "ec2", "--reason", ""), "reason"),
    (("services", "disable", "ec2", "--reason", "x", "--actor", "service:ec2"), "actor"),
])
def test_bad_cli_input_exits_2_naming_the_problem(
        settings: Settings, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
        message: str) -> None:
    code, _out, err = cli(capsys, *argv)
    assert code == 2 and message in err, err


def test_the_cli_shows_live_instances_when_nats_answers(
        settings: Settings, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateways.cli import services as cli_services
    from kernel.contracts.liveness import Heartbeat

    beat = Heartbeat(name="ec2", instance_id="abc123", version="1.0",
                     endpoints={"http": "http://127.0.0.1:8482/"}, pid=42, host="h1",
                     started_at=1.0, at=2.0, enabled=True)

    async def fake_live(_js: Any, name: str | None = None) -> list[Heartbeat]:
        return [beat] if name in (None, "ec2") else []

    class FakeNats:
        def jetstream(self) -> None:
            return None

        async def close(self) -> None:
            return None

    async def fake_connect(*_a: Any, **_k: Any) -> FakeNats:
        return FakeNats()

    monkeypatch.setattr("kernel.contracts.liveness.live_instances", fake_live)
    monkeypatch.setattr("kernel.contracts.connection.connect", fake_connect)
    assert cli_services.live_instances_or_none(settings) == ([msgspec.to_builtins(beat)], "")
    code, out, _ = cli(capsys, "services", "show", "ec2")
    assert code == 0 and "instance abc123 on h1 pid 42" in out
    code, out, _ = cli(capsys, "services")
    assert code == 0 and "  1  " in out and "unknown" not in out


def test_a_services_key_file_runs_it_on_a_machine_without_the_keyring(
        settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from dataclasses import replace

    from gateways.access import Keyring, keys_path
    from kernel.contracts.services import credentials_path
    from services.framework.credentials import service_credentials

    code, out, _ = cli(capsys, "services", "key", "ec2", "--out", str(tmp_path / "ec2.key"))
    assert code == 0 and "written to" in out
    assert (tmp_path / "ec2.key").stat().st_mode & 0o777 == 0o600
    made = service_credentials(settings, "ec2")  # the platform's own copy: the same key
    assert Keyring(keys_path(settings)).get(made.key_id) is not None

    elsewhere = replace(settings, data_dir=tmp_path / "elsewhere", keys_file="")
    target = credentials_path(elsewhere.data_dir, "ec2")
    target.parent.mkdir(parents=True)
    target.write_bytes((tmp_path / "ec2.key").read_bytes())
    target.chmod(0o600)
    assert service_credentials(elsewhere, "ec2") == made  # used as it is, no keyring made
    assert not keys_path(elsewhere).exists()
    code, _, err = cli(capsys, "services", "key", "ec2", "--out", str(tmp_path))
    assert code == 2 and "is a directory" in err

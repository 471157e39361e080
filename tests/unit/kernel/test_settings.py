"""Settings: defaults work, TOML then environment override, bad or unknown settings are named."""

from pathlib import Path

import pytest

from aggregates.errors import ConfigError
from kernel.settings import Settings, load_settings


def test_defaults_run_the_embedded_platform(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no cloudkernel.toml here
    s = load_settings(env={})
    assert s.store == "sqlite"
    assert s.embedded_nats and s.nats_urls == ()
    assert s.data_dir == Path("data")
    assert s == Settings()


def test_toml_then_environment_override(tmp_path: Path) -> None:
    cfg = tmp_path / "cloudkernel.toml"
    cfg.write_text('store = "postgres"\npostgres_dsn = "postgresql://u:secret@db:5432/ck"\n'
                   'api_port = 9000\nnats_urls = ["nats://a:4222", "nats://b:4222"]\n')
    s = load_settings(env={"CLOUDKERNEL_API_PORT": "9100"}, config_path=cfg)
    assert s.store == "postgres" and s.api_port == 9100
    assert s.nats_urls == ("nats://a:4222", "nats://b:4222") and not s.embedded_nats
    assert s.sources["api_port"] == "CLOUDKERNEL_API_PORT"
    assert s.sources["store"] == str(cfg)
    assert "secret" not in str(s.describe()["postgres_dsn"])


def test_env_list_is_comma_separated() -> None:
    s = load_settings(env={"CLOUDKERNEL_NATS_URLS": "nats://a:1, nats://b:2"})
    assert s.nats_urls == ("nats://a:1", "nats://b:2")


def test_services_to_start_are_a_list_and_empty_starts_none(tmp_path: Path) -> None:
    assert load_settings(env={}).services == ("enduser", "ec2", "console")
    assert load_settings(env={"CLOUDKERNEL_SERVICES": "ec2, ec2"}).services == ("ec2",)
    assert load_settings(env={"CLOUDKERNEL_SERVICES": ""}).services == ()
    (tmp_path / "c.toml").write_text('services = ["enduser"]\n')
    assert load_settings(env={}, config_path=tmp_path / "c.toml").services == ("enduser",)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CLOUDKERNEL_API_PORT": "http"}, "setting api_port (from CLOUDKERNEL_API_PORT): "
                                           "expected an integer from 1 to 65535, got 'http'"),
        ({"CLOUDKERNEL_API_PORT": "70000"}, "expected an integer from 1 to 65535"),
        ({"CLOUDKERNEL_STORE": "mysql"}, "setting store (from CLOUDKERNEL_STORE): expected one "
                                         "of 'sqlite', 'postgres', got 'mysql'"),
        ({"CLOUDKERNEL_NATS_URLS": "http://x"}, "setting nats_urls"),
        ({"CLOUDKERNEL_POSTGRES_DSN": "mysql://x"}, "setting postgres_dsn"),
        ({"CLOUDKERNEL_STOER": "sqlite"}, "unknown setting 'stoer' (from CLOUDKERNEL_STOER)"),
        ({"CLOUDKERNEL_STORE": "postgres"}, "setting postgres_dsn: required when store is"),
        ({"CLOUDKERNEL_SERVICES": "ec2,s3"}, "setting services (from CLOUDKERNEL_SERVICES): "
                                             "expected a list of service names among enduser"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_them(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_in_toml_and_broken_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("apiport = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'apiport' \(from .*c.toml\)"):
        load_settings(env={}, config_path=cfg)
    cfg.write_text("api_port = \n")
    with pytest.raises(ConfigError, match=r"config file .*c.toml"):
        load_settings(env={}, config_path=cfg)


def test_an_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={"CLOUDKERNEL_CONFIG": str(tmp_path / "missing.toml")})


def test_test_only_variables_are_not_settings() -> None:
    s = load_settings(env={"CLOUDKERNEL_TEST_POSTGRES_DSN": "postgresql://x/y"})
    assert s == Settings()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.store = "postgres"  # type: ignore[misc]

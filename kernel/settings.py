"""Settings: one typed, frozen object read once from `cloudkernel.toml` and `CLOUDKERNEL_*`.

Precedence: defaults, then the TOML file, then environment overrides. A wrong or unknown
setting raises ConfigError with one line naming the setting, where it came from and the
expected form. This is the only module that reads the process environment.
"""

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aggregates.errors import ConfigError

ENV_PREFIX = "CLOUDKERNEL_"
CONFIG_ENV = "CLOUDKERNEL_CONFIG"
DEFAULT_CONFIG_FILE = "cloudkernel.toml"
# Variables with the prefix that are not settings: the config path and the test suite's own.
_NOT_SETTINGS = (CONFIG_ENV, "CLOUDKERNEL_TEST_")


@dataclass(frozen=True)
class Settings:
    """Everything cloudkernel can be configured with; the defaults run the embedded platform."""

    data_dir: Path = Path("data")
    store: str = "sqlite"
    postgres_dsn: str = ""
    postgres_schema: str = "public"
    postgres_pool_size: int = 4
    postgres_connect_timeout: int = 5
    nats_urls: tuple[str, ...] = ()
    nats_port: int = 4322
    nats_replicas: int = 1  # each stream's replicas on a NATS cluster (3 in production)
    # several kernels (PostgreSQL): partitions of the operations and their leases
    kernel_partitions: int = 16
    lease_seconds: float = 5.0
    kernel_name: str = ""  # this kernel's name in the leases (empty: host-pid-random)
    api_host: str = "127.0.0.1"
    api_port: int = 8480
    metrics_port: int = 0  # this process's /metrics on api_host (0: none)
    log_level: str = "INFO"
    inventory_file: str = ""
    busy_entities: str = "queue"
    keys_file: str = ""
    # reality: how hosts are observed and what drift does (kernel/reality)
    observe_interval_seconds: float = 10.0
    host_disconnected_after: int = 2  # missed reports
    host_down_after: int = 4  # missed reports
    power_missing_after: int = 2  # reports of its host without the VM
    on_stopped_out_of_band: str = "adopt"  # or "restart"
    on_unexpected_running: str = "adopt"  # or "stop"
    on_unknown_domain: str = "quarantine"  # or "adopt"
    # ACL service (services/acl): LDAP login and bearer tokens
    acl_ldap_url: str = ""  # e.g. ldap://ldap.example.org:389; empty: local passwords only
    acl_ldap_user_dn: str = "uid={username},ou=people,dc=example,dc=org"
    acl_ldap_account: str = ""  # the account LDAP users are created in on first login
    acl_ldap_role: str = "user"  # their role: user or domain_admin
    acl_ldap_timeout_seconds: float = 3.0
    acl_token_hours: float = 8.0
    console_ticket_seconds: float = 60.0  # how long a minted console link stays valid
    # services on the platform (issue 9): each one a separate process talking NATS only
    services: tuple[str, ...] = ("enduser", "ec2", "console")  # what `up` starts; () none
    service_heartbeat_seconds: float = 2.0  # liveness TTL is three heartbeats
    enduser_port: int = 8481
    ec2_port: int = 8482
    ec2_region: str = "cloudkernel-1"
    # console proxy (services/console): VM screens and serial consoles through single-use links
    console_port: int = 8483
    console_public_url: str = ""  # the proxy's URL as browsers reach it (default: api_host:port)
    console_allowed_origins: tuple[str, ...] = ()  # beside its own and the admin page's origin
    console_sessions_per_user: int = 4
    console_secret_file: str = ""  # shared with the hypervisor workers (default <data_dir>/...)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def embedded_nats(self) -> bool:
        """True when cloudkernel starts its own nats-server."""
        return not self.nats_urls

    @property
    def console_url(self) -> str:
        """Where browsers reach the console proxy."""
        return self.console_public_url or f"http://{self.api_host}:{self.console_port}"

    @property
    def console_secret_path(self) -> Path:
        """The console secret's file, shared by the hypervisor workers and the proxy."""
        return Path(self.console_secret_file) if self.console_secret_file \
            else self.data_dir / "console.secret"

    @property
    def nats_servers(self) -> tuple[str, ...]:
        """Where to reach NATS: the configured cluster, or the embedded server."""
        return self.nats_urls or (f"nats://127.0.0.1:{self.nats_port}",)

    def describe(self) -> dict[str, Any]:
        """The settings as plain values, with the password of the DSN hidden."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            if f.name == "postgres_dsn" and value:
                value = _hide_password(value)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def _int_in(lo: int, hi: int) -> tuple[Callable[[Any], Any], str]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError
        n = int(v) if isinstance(v, str) else v
        if not isinstance(n, int) or not lo <= n <= hi:
            raise ValueError
        return n

    return parse, f"an integer from {lo} to {hi}"


def _number_in(lo: float, hi: float) -> tuple[Callable[[Any], Any], str]:
    def parse(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError
        n = float(v) if isinstance(v, str | int) else v
        if not isinstance(n, float) or not lo <= n <= hi:
            raise ValueError
        return n

    return parse, f"a number from {lo:g} to {hi:g}"


def _choice(*options: str) -> tuple[Callable[[Any], Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in options:
            raise ValueError
        return v.lower()

    return parse, "one of " + ", ".join(repr(o) for o in options)


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError
    return v


def _path(v: Any) -> Path:
    if not isinstance(v, str) or not v.strip():
        raise ValueError
    return Path(v).expanduser()


def _dsn(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError
    if v and urlsplit(v).scheme not in ("postgres", "postgresql") and "=" not in v:
        raise ValueError
    return v


def _nats_urls(v: Any) -> tuple[str, ...]:
    items = [s.strip() for s in v.split(",")] if isinstance(v, str) else v
    if not isinstance(items, list | tuple):
        raise ValueError
    urls = tuple(u for u in items if u)
    for u in urls:
        if not isinstance(u, str) or urlsplit(u).scheme not in ("nats", "tls", "ws", "wss"):
            raise ValueError
        if not urlsplit(u).hostname:
            raise ValueError
    return urls


KNOWN_SERVICES = ("enduser", "ec2", "console")


def _http_url(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError
    if v and (urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname):
        raise ValueError
    return v.rstrip("/")


def _origins(v: Any) -> tuple[str, ...]:
    items = [s.strip() for s in v.split(",")] if isinstance(v, str) else v
    if not isinstance(items, list | tuple):
        raise ValueError
    origins = tuple(dict.fromkeys(str(i).rstrip("/") for i in items if i))
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ValueError
    return origins


def _services(v: Any) -> tuple[str, ...]:
    items = [s.strip() for s in v.split(",")] if isinstance(v, str) else v
    if not isinstance(items, list | tuple):
        raise ValueError
    names = tuple(dict.fromkeys(i for i in items if i))
    if any(n not in KNOWN_SERVICES for n in names):
        raise ValueError
    return names


_PARSERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "data_dir": (_path, "a directory path"),
    "store": _choice("sqlite", "postgres"),
    "postgres_dsn": (_dsn, "a PostgreSQL URL like postgresql://user:pass@host:5432/db"),
    "postgres_schema": (_text, "a schema name"),
    "postgres_pool_size": _int_in(1, 100),
    "postgres_connect_timeout": _int_in(1, 300),
    "nats_urls": (_nats_urls, "a list of nats://host:port URLs (comma-separated in the env)"),
    "nats_port": _int_in(1, 65535),
    "nats_replicas": _int_in(1, 5),
    "kernel_partitions": _int_in(1, 1024),
    "lease_seconds": _number_in(0.5, 600),
    "kernel_name": (_text, "a name for this kernel (unique among the running kernels)"),
    "metrics_port": _int_in(0, 65535),
    "api_host": (_text, "a host name or IP address"),
    "api_port": _int_in(1, 65535),
    "log_level": _choice("debug", "info", "warning", "error"),
    "inventory_file": (_text, "a path to an inventory TOML file"),
    "busy_entities": _choice("queue", "refuse"),
    "keys_file": (_text, "a path to the keyring JSON file (default <data_dir>/keys.json)"),
    "observe_interval_seconds": _number_in(0.05, 3600),
    "host_disconnected_after": _int_in(1, 1000),
    "host_down_after": _int_in(1, 1000),
    "power_missing_after": _int_in(1, 1000),
    "on_stopped_out_of_band": _choice("adopt", "restart"),
    "on_unexpected_running": _choice("adopt", "stop"),
    "on_unknown_domain": _choice("quarantine", "adopt"),
    "acl_ldap_url": (_text, "an LDAP URL like ldap://host:389 (or empty)"),
    "acl_ldap_user_dn": (_text, "a DN template containing {username}"),
    "acl_ldap_account": (_text, "the name of an ACL account"),
    "acl_ldap_role": _choice("user", "domain_admin"),
    "acl_ldap_timeout_seconds": _number_in(0.1, 60),
    "acl_token_hours": _number_in(0.01, 720),
    "console_ticket_seconds": _number_in(0.5, 3600),
    "services": (_services, "a list of service names among enduser, ec2, console (comma-sep. "
                            "in the env; empty starts none)"),
    "service_heartbeat_seconds": _number_in(0.05, 3600),
    "enduser_port": _int_in(1, 65535),
    "ec2_port": _int_in(1, 65535),
    "ec2_region": (_text, "an AWS-style region name"),
    "console_port": _int_in(1, 65535),
    "console_public_url": (_http_url, "an http(s) URL like https://console.example.org (or empty)"),
    "console_allowed_origins": (_origins, "a list of origins like https://admin.example.org "
                                          "(comma-separated in the env)"),
    "console_sessions_per_user": _int_in(1, 1000),
    "console_secret_file": (_text, "a path to the console secret the hypervisor workers share"),
}


def load_settings(
    env: Mapping[str, str] | None = None, config_path: Path | str | None = None
) -> Settings:
    """Read the TOML file (if any) and the environment, validate, and freeze."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = Path(config_path) if config_path else Path(env.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
    explicit = config_path is not None or CONFIG_ENV in env
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        for key, raw in data.items():
            _take(key, raw, f"{path}", values, sources)
    elif explicit:
        raise ConfigError(f"config file {path} does not exist ({CONFIG_ENV} or --config)")
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(_NOT_SETTINGS):
            continue
        key = name[len(ENV_PREFIX):].lower()
        _take(key, raw, name, values, sources)
    settings = Settings(**values, sources=sources)
    if settings.store == "postgres" and not settings.postgres_dsn:
        raise ConfigError(
            "setting postgres_dsn: required when store is 'postgres' "
            "(set CLOUDKERNEL_POSTGRES_DSN=postgresql://user:pass@host:5432/db)"
        )
    if settings.host_down_after <= settings.host_disconnected_after:
        raise ConfigError(
            f"setting host_down_after ({settings.host_down_after}) must be greater than "
            f"host_disconnected_after ({settings.host_disconnected_after})")
    if settings.log_level:
        settings = _replace(settings, log_level=settings.log_level.upper())
    return settings


def _take(key: str, raw: Any, origin: str, values: dict[str, Any], sources: dict[str, str]) -> None:
    if key not in _PARSERS:
        known = ", ".join(sorted(_PARSERS))
        raise ConfigError(f"unknown setting {key!r} (from {origin}); known settings: {known}")
    parse, form = _PARSERS[key]
    try:
        values[key] = parse(raw)
    except (ValueError, TypeError):
        raise ConfigError(
            f"setting {key} (from {origin}): expected {form}, got {raw!r}"
        ) from None
    sources[key] = origin


def _replace(settings: Settings, **changes: Any) -> Settings:
    current = {f.name: getattr(settings, f.name) for f in fields(settings)}
    current.update(changes)
    return Settings(**current)


def _hide_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return dsn

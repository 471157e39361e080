"""The platform log as the guru's LogSource, and the guru's store configuration.

The guru reads the platform application's notification log directly (never its own copy):
only the topics its index folds, after the position it reached, mapped to domain events by
the platform's own mapper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aggregates.errors import ConfigError
from kernel.settings import Settings
from kernel.store.application import KernelApplication, PlatformApplication, open_application
from subsystems.networkguru.index import TOPICS

__all__ = ["CONFIG_KEYS", "ApplicationLog", "guru_config", "settings_from_config"]

CONFIG_KEYS = ("store", "data_dir", "postgres_dsn", "postgres_schema")


class ApplicationLog:
    """Reads `(position, event)` pairs of the given topics from an application's log."""

    def __init__(self, app: KernelApplication, topics: Sequence[str] = TOPICS) -> None:
        """Follow `app`'s notification log; `close()` closes the application."""
        self.app, self.topics = app, tuple(topics)

    @classmethod
    def open(cls, settings: Settings) -> ApplicationLog:
        """Open the platform application on the configured (migrated) store."""
        return cls(open_application(PlatformApplication, settings))

    def read(self, after: int, limit: int) -> list[tuple[int, Any]]:
        """Up to `limit` events after position `after`."""
        notes = self.app.recorder.select_notifications(
            start=after, limit=limit, topics=self.topics, inclusive_of_start=False)
        return [(note.id, self.app.mapper.to_domain_event(note)) for note in notes]

    def close(self) -> None:
        """Close the application and its connections."""
        self.app.close()


def settings_from_config(config: Mapping[str, Any]) -> Settings:
    """The store part of Settings from a plugin config dict; ConfigError names a bad key."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"networkguru: unknown config keys {unknown}; expected "
                          f"{list(CONFIG_KEYS)}")
    for key in CONFIG_KEYS:
        if key in config and not isinstance(config[key], str):
            raise ConfigError(f"networkguru: config {key!r} must be a string")
    store = config.get("store", "sqlite")
    if store not in ("sqlite", "postgres"):
        raise ConfigError(f"networkguru: config 'store' must be 'sqlite' or 'postgres', "
                          f"got {store!r}")
    if store == "postgres" and not config.get("postgres_dsn"):
        raise ConfigError("networkguru: config 'postgres_dsn' is required with store "
                          "'postgres'")
    return Settings(store=store, data_dir=Path(config.get("data_dir", "data")),
                    postgres_dsn=config.get("postgres_dsn", ""),
                    postgres_schema=config.get("postgres_schema", "public"))


def guru_config(settings: Settings) -> dict[str, str]:
    """The guru's config dict for the platform's settings (for the composition root)."""
    return {"store": settings.store, "data_dir": str(settings.data_dir),
            "postgres_dsn": settings.postgres_dsn, "postgres_schema": settings.postgres_schema}

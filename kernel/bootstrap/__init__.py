"""The composition root: the one place adapters are built and wired from Settings."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kernel.bootstrap.catalog import CLOUD_COMMANDS, cloud_effects
from kernel.cloud.addresses import ADDRESS_HANDLERS
from kernel.cloud.consoles import console_handlers
from kernel.cloud.services import SERVICE_HANDLERS
from kernel.commands import Command, CommandOutcome, CommandService, Handler
from kernel.inventory.loader import LoadInventory, handle_load_inventory
from kernel.settings import Settings
from kernel.store.application import KernelApplication, PlatformApplication, open_application

if TYPE_CHECKING:
    from kernel.dispatch_feed import DispatchFeed
    from kernel.operations import OperationEngine

SAMPLE_INVENTORY = Path(__file__).resolve().parents[2] / "examples" / "inventory.toml"

PLATFORM_HANDLERS: dict[type, Handler] = {
    LoadInventory: handle_load_inventory,
    **SERVICE_HANDLERS,
    **ADDRESS_HANDLERS,
    **console_handlers(),
}


@dataclass
class Platform:
    """The platform application and its command service, opened on the configured store."""

    settings: Settings
    app: KernelApplication
    commands: CommandService = field(init=False)

    def __post_init__(self) -> None:
        self.commands = CommandService(self.app, {
            **PLATFORM_HANDLERS,
            **console_handlers(ticket_seconds=self.settings.console_ticket_seconds)})

    def close(self) -> None:
        """Release the store's connections."""
        self.app.close()


def open_platform(settings: Settings) -> Platform:
    """Open the (already migrated) platform application."""
    return Platform(settings, open_application(PlatformApplication, settings))


def open_engine(settings: Settings) -> tuple[Platform, "OperationEngine", "DispatchFeed"]:
    """The platform with its operation engine and dispatch feed."""
    from kernel.dispatch_feed import DispatchFeed
    from kernel.operations import OperationEngine

    platform = open_platform(settings)
    engine = OperationEngine(platform.app, refuse_when_busy=settings.busy_entities == "refuse",
                             effects=cloud_effects(platform.app),
                             operation_commands=CLOUD_COMMANDS)
    return platform, engine, DispatchFeed(platform.app)


# Runs a decoded command: (command, *, idempotency_key=..., actor=...) -> CommandOutcome.
CommandRunner = Callable[..., CommandOutcome]


def command_catalog(platform: Platform,
                    engine: "OperationEngine") -> dict[str, tuple[type[Command], CommandRunner]]:
    """Every command the admin API and the NATS intake accept, by tag: its type and runner."""
    catalog: dict[str, tuple[type[Command], CommandRunner]] = {}
    # Operation commands go through the engine (its lock, cache and timers), not its service.
    for types, runner in ((platform.commands.handlers, platform.commands.execute),
                          (engine.commands.handlers, engine.execute)):
        for type_ in types:
            catalog[str(type_.__struct_config__.tag)] = (type_, runner)
    return catalog


def inventory_path(settings: Settings) -> Path | None:
    """The inventory `up` loads: the configured file, else the bundled sample if present."""
    if settings.inventory_file:
        return Path(settings.inventory_file)
    return SAMPLE_INVENTORY if SAMPLE_INVENTORY.is_file() else None

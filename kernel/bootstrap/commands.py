"""The CLI commands the services contribute (`cloudkernel acl ...`), added to the main parser
here so that the platform's CLI imports no service."""

from typing import Any

from services.acl.cli import add_acl_commands


def add_service_commands(sub: Any) -> None:
    """Register every service's commands on the main parser's subcommands."""
    add_acl_commands(sub)

"""The cloud commands and effects the composition root gives the operation engine."""

from typing import Any

from kernel.cloud.directory import Directory
from kernel.cloud.networks import NETWORK_COMMANDS, NETWORK_EFFECTS
from kernel.cloud.nics import NIC_EFFECTS
from kernel.cloud.templates import TEMPLATE_EFFECTS, DownloadTemplateCommand, download_factory
from kernel.cloud.vm_effects import vm_effects
from kernel.cloud.vms import (
    DeployVm,
    DestroyVm,
    StartVm,
    StopVm,
    deploy_factory,
    destroy_factory,
    start_factory,
    stop_factory,
)
from kernel.effects import Effects
from kernel.store.application import KernelApplication

CLOUD_COMMANDS: dict[type[Any], Any] = {
    DeployVm: deploy_factory,
    StartVm: start_factory,
    StopVm: stop_factory,
    DestroyVm: destroy_factory,
    DownloadTemplateCommand: download_factory,
    **NETWORK_COMMANDS,
}


def cloud_effects(app: KernelApplication) -> Effects:
    """Every cloud operation's effects, over this application's entities."""
    return vm_effects(Directory(app)) | TEMPLATE_EFFECTS | NIC_EFFECTS | NETWORK_EFFECTS

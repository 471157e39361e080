"""The cloud commands and effects the composition root gives the operation engine."""

from typing import Any

from kernel.cloud.hosts import HOST_COMMANDS
from kernel.cloud.maintenance import MAINTENANCE_EFFECTS
from kernel.cloud.networks import NETWORK_COMMANDS, NETWORK_EFFECTS
from kernel.cloud.nics import NIC_EFFECTS
from kernel.cloud.repair import REPAIR_COMMANDS
from kernel.cloud.storage_pools import directory
from kernel.cloud.templates import TEMPLATE_EFFECTS, DownloadTemplateCommand, download_factory
from kernel.cloud.vm_effects import vm_effects
from kernel.cloud.vm_moves import VM_MOVE_COMMANDS, VM_MOVE_EFFECTS
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
from kernel.cloud.volume_copies import COPY_COMMANDS, COPY_EFFECTS
from kernel.cloud.volume_effects import VOLUME_EFFECTS
from kernel.cloud.volume_moves import VOLUME_MOVE_COMMANDS, VOLUME_MOVE_EFFECTS
from kernel.cloud.volumes import VOLUME_COMMANDS
from kernel.effects import Effects
from kernel.reality.actions import REALITY_EFFECTS
from kernel.store.application import KernelApplication

CLOUD_COMMANDS: dict[type[Any], Any] = {
    DeployVm: deploy_factory,
    StartVm: start_factory,
    StopVm: stop_factory,
    DestroyVm: destroy_factory,
    DownloadTemplateCommand: download_factory,
    **NETWORK_COMMANDS,
    **VOLUME_COMMANDS,
    **COPY_COMMANDS,
    **VM_MOVE_COMMANDS,
    **VOLUME_MOVE_COMMANDS,
    **REPAIR_COMMANDS,
    **HOST_COMMANDS,
}


def cloud_effects(app: KernelApplication) -> Effects:
    """Every cloud operation's effects, over this application's entities."""
    return vm_effects(directory(app)) | TEMPLATE_EFFECTS | NIC_EFFECTS | NETWORK_EFFECTS \
        | VOLUME_EFFECTS | COPY_EFFECTS | VM_MOVE_EFFECTS | VOLUME_MOVE_EFFECTS \
        | REALITY_EFFECTS \
        | MAINTENANCE_EFFECTS  # after VM_MOVE_EFFECTS: counts a migration once it settled

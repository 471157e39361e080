"""The sample inventory loaded into an application, with its first template marked Ready (as
if downloaded): what the engine-level tests deploy from without a storage worker."""

from uuid import UUID

from aggregates.template import Template
from kernel.bootstrap import SAMPLE_INVENTORY
from kernel.commands import CommandService
from kernel.inventory.loader import LoadInventory, handle_load_inventory, load_inventory_file
from kernel.store.application import KernelApplication

GIB = 1024**3


def first_id(app: KernelApplication, topic: str) -> UUID:
    """The id of the first aggregate the log shows with this creation topic."""
    return next(UUID(str(n.originator_id)) for n in app.recorder.select_notifications(
        start=None, limit=1000, topics=(topic,)))


def load_sample_with_ready_template(app: KernelApplication,
                                    commands: CommandService | None = None) -> Template:
    """Load the sample inventory (through `commands`, or a plain command service) and mark
    its first template downloaded into the first image store; returns the template."""
    load_inventory_file(commands or CommandService(app, {LoadInventory: handle_load_inventory}),
                        SAMPLE_INVENTORY)
    template: Template = app.repository.get(first_id(app, "template.Registered"))
    template.start_download(first_id(app, "image_store.Added"))
    template.download_completed(2 * GIB)
    app.save(template)
    return template

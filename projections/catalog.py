"""Every read model by name: what migrate creates, the worker runs and the CLI lists."""

from projections.addresses import AddressModel, AddressPoolModel
from projections.audit import AuditModel
from projections.fleet import HostModel
from projections.inventory import InventoryModel
from projections.models import OperationModel, RowModel, VmModel
from projections.networks import NetworkModel
from projections.services import ServiceModel
from projections.storage import SnapshotModel, TemplateModel, VolumeModel

MODELS: dict[str, type[RowModel]] = {m.name: m for m in (
    VmModel, OperationModel, HostModel, NetworkModel, VolumeModel, SnapshotModel,
    TemplateModel, AuditModel, InventoryModel, ServiceModel, AddressModel, AddressPoolModel,
)}

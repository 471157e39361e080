"""The End User API's JSON shapes of the tenant view's rows (no host or pool: a tenant's
view of its resources, not of the platform's)."""

from collections.abc import Iterable
from typing import Any

from services.framework.tenant_rows import OperationRow, VmRow, VolumeRow


def vm_json(vm: VmRow, volumes: Iterable[VolumeRow] | None = None) -> dict[str, Any]:
    """A VM, with its attached volumes when given."""
    out = {"id": vm.id, "name": vm.name, "account": vm.account, "state": vm.state,
           "zone_id": vm.zone_id, "template_id": vm.template_id,
           "offering_id": vm.offering_id, "root_volume_id": vm.root_volume_id,
           "last_error": vm.last_error or None, "created_at": vm.created_at,
           "updated_at": vm.updated_at}
    if volumes is not None:
        out["volumes"] = [{"id": v.id, "device_id": v.device_id, "type": v.volume_type}
                          for v in volumes]
    return out


def volume_json(volume: VolumeRow) -> dict[str, Any]:
    """A volume; `vm_id` and `device_id` while attached."""
    return {"id": volume.id, "name": volume.name, "account": volume.account,
            "state": volume.state, "type": volume.volume_type,
            "size_bytes": volume.size_bytes, "vm_id": volume.vm_id,
            "device_id": volume.device_id, "zone_id": volume.zone_id,
            "last_error": volume.last_error or None, "created_at": volume.created_at,
            "updated_at": volume.updated_at}


def operation_json(operation: OperationRow) -> dict[str, Any]:
    """An operation's outcome so far (`status` Running until it ended)."""
    return {"id": operation.id, "kind": operation.kind, "status": operation.status,
            "finished": operation.finished, "entity_ids": list(operation.entity_ids),
            "error_code": operation.error_code, "message": operation.message,
            "accepted_at": operation.accepted_at, "finished_at": operation.finished_at}

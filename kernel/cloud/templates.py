"""Template download: from a `file://` or `http(s)://` URL into an image store, checksum verified.

`template.download` starts the download on the Template aggregate (Downloading) in the same
transaction as the operation; `storage.download_template` fetches and verifies the file; its
success records the template Ready with its size (the virtual size of the disk it holds,
which a root volume is made at unless a deploy asks for more) and checksum (a mismatch against the
registered checksum is recorded as a failure by the aggregate). If the operation fails, the
template is in Error and may be downloaded again.
"""

from datetime import datetime
from uuid import UUID, uuid4

import msgspec

from aggregates.errors import NotFoundError, ValidationError
from aggregates.image_store import ImageStore
from aggregates.operation import Operation, OperationState
from aggregates.plan import Plan, PlannedStep, RetryPolicy
from aggregates.template import Template
from kernel.cloud.vms import store_directory, template_file
from kernel.commands import Command
from kernel.effects import BaseEffect, Effects, EffectScope, StepContext
from kernel.operation_commands import StartOperation
from kernel.steps.storage import DownloadTemplate, TemplateDownloaded
from kernel.unit_of_work import UnitOfWork

DOWNLOAD_RETRY = RetryPolicy(max_attempts=3, initial_delay=2.0, max_delay=30.0)


class DownloadTemplateCommand(Command, frozen=True, kw_only=True, tag="template.download"):
    """Download a registered template into an image store of its zone."""

    template_id: UUID
    image_store_id: UUID


class TemplateRef(msgspec.Struct, frozen=True, kw_only=True):
    """The template a bound download step is about."""

    template_id: UUID


class DownloadAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The download operation and its template."""

    operation_id: UUID
    template_id: UUID


def wire_checksum(checksum: str) -> str:
    """`{SHA-256}hex` / `{MD5}hex` / bare hex, as the storage contract's `sha256:`/`md5:`."""
    algorithm, _, digest = checksum.rpartition("}")
    name = algorithm.lstrip("{").replace("-", "").lower() or \
        ("sha256" if len(digest) == 64 else "md5")
    return f"{name}:{digest.lower()}"


def download_factory(uow: UnitOfWork, command: DownloadTemplateCommand,
                     now: datetime) -> tuple[StartOperation, DownloadAccepted]:
    """template.download: the template is Downloading; the operation fetches it."""
    template = uow.get(command.template_id)
    if not isinstance(template, Template):
        raise NotFoundError(f"no template {command.template_id}")
    store = uow.get(command.image_store_id)
    if not isinstance(store, ImageStore):
        raise NotFoundError(f"no image store {command.image_store_id}")
    if store.zone_id not in (None, template.zone_id):
        raise ValidationError(f"image store {store.name} is not in template "
                              f"{template.name}'s zone")
    if template.checksum is None:
        raise ValidationError(f"template {template.name} has no checksum: register it with "
                              "one, so that the download can be verified")
    template.start_download(store.id)
    step = PlannedStep(step_id=uuid4(), subsystem="storage", action="download_template",
                       args=msgspec.Raw(msgspec.json.encode(TemplateRef(
                           template_id=template.id))),
                       retry=DOWNLOAD_RETRY, deadline_seconds=3600.0)
    operation_id = uuid4()
    return (StartOperation(kind="template.download", operation_id=operation_id,
                           plan=Plan(steps=(step,)), entity_ids=(template.id,)),
            DownloadAccepted(operation_id=operation_id, template_id=template.id))


class DownloadEffect(BaseEffect):
    """storage.download_template: bound from the template and its store; records Ready."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        template = scope.peek(ctx.plan_args(TemplateRef).template_id, Template)
        if template.image_store_id is None or template.checksum is None:
            raise NotFoundError(f"template {template.name} has no image store or checksum")
        store = scope.peek(template.image_store_id, ImageStore)
        return DownloadTemplate(url=template.url, directory=store_directory(store),
                                file_name=template_file(template),
                                checksum=wire_checksum(template.checksum))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        done = msgspec.json.decode(result, type=TemplateDownloaded)
        template = scope.get(ctx.plan_args(TemplateRef).template_id, Template)
        algorithm, _, digest = done.checksum.partition(":")
        # the size of the disk it holds (CloudStack's template size), not the file's length
        template.download_completed(done.virtual_size_bytes or done.size_bytes,
                                    f"{{{'SHA-256' if algorithm == 'sha256' else 'MD5'}}}"
                                    f"{digest}")


class DownloadEnded:
    """template.download ended otherwise than well: the template is in Error."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        if op.state is OperationState.SUCCEEDED:
            return []
        ref = msgspec.json.decode(op.forward_steps()[0].args, type=TemplateRef)
        template = scope.get(ref.template_id, Template)
        if template.state.value == "Downloading":
            last = op.forward_steps()[0].attempts
            reason = f"{last[-1].error_code}: {last[-1].message}" if last else op.state.value
            template.download_failed(reason)
        return []


TEMPLATE_EFFECTS = Effects(steps={"storage.download_template": DownloadEffect()},
                           operations={"template.download": DownloadEnded()})

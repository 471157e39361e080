"""Template: registration and the download life cycle."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.base import audit_context
from aggregates.errors import InvalidTransitionError, ValidationError
from aggregates.template import Template, TemplateFormat, TemplateState
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]
S = TemplateState
SHA = "{SHA-256}" + "ab" * 32


def make_template(**overrides: object) -> Template:
    """A valid qcow2 template."""
    args: dict = {"name": f"tpl-{uuid4().hex[:8]}", "zone_id": uuid4(),
                  "url": "http://images.example.com/debian.qcow2"}
    args.update(overrides)
    return Template.register(**args)


def test_register_defaults() -> None:
    zone = uuid4()
    template = make_template(name="debian12", zone_id=zone, checksum=SHA)
    assert template.id == Template.create_id(zone, "debian12")
    assert template.state is S.REGISTERED and template.format is TemplateFormat.QCOW2
    assert template.image_store_id is None and template.size_bytes is None


@pytest.mark.parametrize("overrides", [
    {"name": ""}, {"url": "debian.qcow2"}, {"os_type": ""}, {"checksum": "xyz"},
])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_template(**overrides)


def test_download_to_ready(refused: Refused) -> None:
    template = make_template(checksum=SHA)
    store = uuid4()
    refused(template, lambda: template.download_completed(10), "complete download")
    template.start_download(store)
    assert template.state is S.DOWNLOADING and template.image_store_id == store
    refused(template, lambda: template.start_download(store), "start download")
    refused(template, template.remove, "remove")
    with pytest.raises(ValidationError):
        template.download_completed(0)
    template.download_completed(2 << 30, SHA.upper().replace("{SHA-256}", ""))
    assert template.state is S.READY and template.size_bytes == 2 << 30
    refused(template, lambda: template.download_failed("late"), "fail download")
    assert roundtrip(template) == template


def test_error_then_retry() -> None:
    template = make_template()
    template.start_download(uuid4())
    template.download_failed("404")
    assert template.state is S.ERROR and template.last_error == "404"
    template.start_download(uuid4())
    template.download_completed(100, "ff00")
    assert template.state is S.READY and template.checksum == "ff00"
    assert template.last_error == ""


def test_checksum_mismatch_is_a_failed_download() -> None:
    template = make_template(checksum=SHA)
    template.start_download(uuid4())
    template.download_completed(100, "{SHA-256}" + "cd" * 32)
    assert template.state is S.ERROR and "checksum mismatch" in template.last_error
    assert roundtrip(template) == template


def test_remove(refused: Refused) -> None:
    template = make_template()
    template.remove()
    assert template.state is S.REMOVED
    refused(template, template.remove, "remove")
    refused(template, lambda: template.start_download(uuid4()), "start download")


def test_audit_metadata_lands_on_events() -> None:
    correlation = uuid4()
    with audit_context("admin", correlation, "register-1"):
        template = make_template()
        template.start_download(uuid4())
    assert {(e.actor, e.correlation_id, e.causation_id)
            for e in template.pending_events} == {("admin", correlation, "register-1")}

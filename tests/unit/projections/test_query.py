"""Read-model queries: unknown filters, badly typed values and limits are clear errors, and
values typed as text (the CLI's, the API's) are coerced so both stores answer the same."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest

from aggregates.errors import ValidationError
from aggregates.host import HostStatus
from kernel.settings import Settings
from kernel.store.application import KernelApplication
from kernel.store.testing import scratch_application
from projections.audit import AuditModel
from projections.fleet import HostModel
from projections.query import QueryError, check_query, coerce
from projections.runner import ProjectionRunner
from projections.views import RowView, open_view

from .story import new_hosts


@pytest.fixture
def app() -> Iterator[KernelApplication]:
    app = scratch_application()
    yield app
    app.close()


@pytest.fixture
def hosts_view(tmp_path: Path) -> Iterator[RowView]:
    view = open_view(HostModel, Settings(data_dir=tmp_path, store="sqlite"), create_table=True)
    yield view
    view.close()


def test_values_are_coerced_to_the_column_type() -> None:
    zone = uuid4()
    assert coerce(HostModel, "zone_id", str(zone)) == zone
    assert coerce(HostModel, "zone_id", zone) is zone
    assert coerce(HostModel, "status", HostStatus.DOWN) == "Down"
    assert coerce(AuditModel, "position", "42") == 42
    assert coerce(AuditModel, "timestamp", "2026-01-01T00:00:00+00:00") == \
        datetime(2026, 1, 1, tzinfo=UTC)
    assert coerce(HostModel, "cpu_overprovisioning", "1.5") == 1.5
    assert coerce(HostModel, "zone_id", None) is None


@pytest.mark.parametrize(("model", "name", "value", "message"), [
    (HostModel, "zone_id", "zone-1", "zone_id must be a UUID, got 'zone-1'"),
    (AuditModel, "position", "ten", "position must be an integer, got 'ten'"),
    (AuditModel, "position", True, "position must be an integer, got True"),
    (AuditModel, "position", 1.5, "position must be an integer, got 1.5"),
    (HostModel, "claims", "{}", "cannot query by claims"),
])
def test_a_badly_typed_value_is_a_query_error_naming_it(
        model: type, name: str, value: object, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        coerce(model, name, value)


def test_unknown_filters_and_bad_limits_are_validation_errors() -> None:
    with pytest.raises(ValidationError, match=r"cannot filter by \['uri'\]; filters are"):
        check_query(HostModel, 10, None, {"uri": "x"})
    for limit in (0, 1001, True, "10"):
        with pytest.raises(QueryError, match="limit must be from 1 to 1000"):
            check_query(HostModel, limit, None, {})  # type: ignore[arg-type]
    after, filters = check_query(AuditModel, 10, "7", {"originator_id": str(uuid4())})
    assert after == 7 and isinstance(filters["originator_id"], type(uuid4()))


def test_text_values_find_the_same_rows_as_typed_ones(
        app: KernelApplication, hosts_view: RowView) -> None:
    hosts = new_hosts(uuid4())
    app.save(*hosts)
    ProjectionRunner(app, hosts_view).run_once()
    typed = hosts_view.list(cluster_id=hosts[0].cluster_id).rows
    assert len(typed) == 2
    assert hosts_view.list(cluster_id=str(hosts[0].cluster_id)).rows == typed
    assert hosts_view.list(status=HostStatus.UP, limit=10).rows == hosts_view.all_rows()
    assert hosts_view.get(str(hosts[0].id)) == hosts_view.get(hosts[0].id) is not None
    with pytest.raises(QueryError, match="id must be a UUID"):
        hosts_view.get("kvm-a1")
    with pytest.raises(QueryError, match="id must be a UUID"):
        hosts_view.list(after="kvm-a1")

"""The JSON pages a read model builds in the database are exactly the rows `list` decodes, as
msgspec encodes them: same values, same keys, same paging."""

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from kernel.settings import Settings
from kernel.store.application import KernelApplication
from kernel.store.testing import scratch_application
from projections.catalog import MODELS
from projections.runner import ProjectionRunner
from projections.views import RowView, open_view

from .scenario import scripted_run
from .story import full_story


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[dict[str, RowView]]:
    app: KernelApplication = scratch_application()
    full_story(app)
    scripted_run(app)
    settings = Settings(data_dir=tmp_path / "data", store="sqlite")
    views = {name: open_view(model, settings, create_table=True)
             for name, model in MODELS.items()}
    for view in views.values():
        ProjectionRunner(app, view).run_once()
    yield views
    for view in views.values():
        view.close()
    app.close()


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("limit", [1, 3, 500])
def test_a_json_page_equals_the_decoded_page(filled: dict[str, RowView], name: str,
                                             limit: int) -> None:
    view = filled[name]
    after = None
    pages = 0
    while True:
        rows = view.list(after=after, limit=limit)
        fast = view.list_json(after=after, limit=limit)
        assert msgspec.json.decode(fast.items) == msgspec.json.decode(
            msgspec.json.encode(rows.rows)), name
        assert fast.next_after == rows.next_after
        pages += 1
        if rows.next_after is None:
            break
        after = rows.next_after
    assert pages >= 1
    assert len(view.all_rows()) > 0 or name not in ("hosts", "vms")


def test_filters_apply_to_json_pages(filled: dict[str, RowView]) -> None:
    view = filled["vms"]
    some = view.all_rows()[0]
    fast = msgspec.json.decode(view.list_json(account=some["account"]).items)
    assert fast and {r["account"] for r in fast} == {some["account"]}
    assert msgspec.json.decode(view.list_json(account="nobody-at-all").items) == []

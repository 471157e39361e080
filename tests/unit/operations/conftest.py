"""The operations tests' shared fixture: the platform's engine on a scratch store holding the
sample cloud with a Ready template (a test module may define a `cloud` of its own)."""

from collections.abc import Iterator

import pytest
from support.sample import load_sample_with_ready_template

from kernel.store.testing import scratch_application

from .test_vm_deploy import Cloud


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    app = scratch_application()
    load_sample_with_ready_template(app)
    yield Cloud(app)
    app.close()

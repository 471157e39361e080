"""A projection runner as a process: `python -m projections.worker NAME [PAGE_SIZE]`.

Settings come from `cloudkernel.toml` and `CLOUDKERNEL_*` as everywhere. The process follows
the platform log until SIGTERM or SIGINT; a SIGKILL loses nothing (a page is one transaction).
"""

import signal
import sys
import threading

from kernel.settings import load_settings
from kernel.store.application import PlatformApplication, open_application
from projections.catalog import MODELS
from projections.runner import DEFAULT_PAGE_SIZE, ProjectionRunner
from projections.views import open_view


def main(argv: list[str]) -> int:
    """Run one projection until told to stop."""
    if not argv or argv[0] not in MODELS:
        print(f"usage: python -m projections.worker {{{','.join(MODELS)}}} [PAGE_SIZE]",
              file=sys.stderr)
        return 2
    page_size = int(argv[1]) if len(argv) > 1 else DEFAULT_PAGE_SIZE
    settings = load_settings()
    app = open_application(PlatformApplication, settings)
    view = open_view(MODELS[argv[0]], settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        ProjectionRunner(app, view, page_size=page_size).run_forever(stop)
    finally:
        view.close()
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

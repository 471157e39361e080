"""`python -m services.console [--config FILE]`: the console proxy as a process;
SIGTERM or SIGINT stops it cleanly."""

import sys

from services.console import SERVICE_NAME, serve
from services.framework.hosting import service_main

if __name__ == "__main__":
    sys.exit(service_main(SERVICE_NAME, "the console proxy service", serve,
                          lambda s: f"{s.console_url}/ (consoles through single-use links)"))

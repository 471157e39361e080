"""`python -m services.enduser [--config FILE]`: the End User API as a process;
SIGTERM or SIGINT stops it cleanly."""

import sys

from services.enduser import SERVICE_NAME, serve
from services.framework.hosting import service_main

if __name__ == "__main__":
    sys.exit(service_main(SERVICE_NAME, "the End User API service", serve,
                          lambda s: f"http://{s.api_host}:{s.enduser_port}/"))

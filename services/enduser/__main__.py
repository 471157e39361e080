"""`python -m gateways.services.enduser [--config FILE]`: the End User API as a process;
SIGTERM or SIGINT stops it cleanly."""

import sys

from gateways.services.enduser import SERVICE_NAME, serve
from gateways.services.hosting import service_main

if __name__ == "__main__":
    sys.exit(service_main(SERVICE_NAME, "the End User API service", serve,
                          lambda s: f"http://{s.api_host}:{s.enduser_port}/"))

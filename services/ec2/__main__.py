"""`python -m services.ec2 [--config FILE]`: the EC2 API service as a process;
SIGTERM or SIGINT stops it cleanly."""

import sys

from services.ec2 import SERVICE_NAME, serve
from services.framework.hosting import service_main

if __name__ == "__main__":
    sys.exit(service_main(SERVICE_NAME, "the EC2 API service", serve,
                          lambda s: f"http://{s.api_host}:{s.ec2_port}/ "
                                    f"(region {s.ec2_region})"))

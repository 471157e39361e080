"""The EC2 harness's `stack` fixture for the service tests."""

from tests.unit.services.ec2_harness import stack

__all__ = ["stack"]

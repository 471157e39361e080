"""cloudkernel gateways api."""

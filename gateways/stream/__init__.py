"""cloudkernel gateways stream."""

"""cloudkernel gateways cli."""

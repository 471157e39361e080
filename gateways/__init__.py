"""cloudkernel gateways."""

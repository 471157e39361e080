"""cloudkernel kernel."""

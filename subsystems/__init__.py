"""cloudkernel subsystems."""

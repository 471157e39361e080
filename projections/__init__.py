"""cloudkernel projections."""

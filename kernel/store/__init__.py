"""cloudkernel kernel store."""

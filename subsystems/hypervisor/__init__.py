"""The libvirt hypervisor subsystem: the only package that imports libvirt."""

"""The libvirt hypervisor subsystem: VM domains, through the shared driver `subsystems.libvirt`."""

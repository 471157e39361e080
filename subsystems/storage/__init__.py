"""The storage subsystem: libvirt storage pools and volumes, and template downloads."""

"""The backup subsystem: a VM's volumes copied to a backup target, with a checksum manifest."""

"""The snapshot subsystem: volume snapshots as checksummed copies, and revert."""

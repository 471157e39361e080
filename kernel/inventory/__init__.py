"""Inventory: zones, pods, clusters, hosts, storage, templates and offerings from a TOML file."""

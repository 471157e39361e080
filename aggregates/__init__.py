"""Event-sourced platform entities: every zone, host, VM, volume and network is an aggregate."""

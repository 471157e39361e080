"""One libvirt connection per host URI for the whole process, shared by the plugins that use it.

A `test:///<file>.xml` URI is its own in-memory host: state made through one connection is not
seen by another, and a new connection starts again from the file. So every plugin in a worker
process (hypervisor, storage, network element, snapshot, backup) must use the same connection
per URI for the process's lifetime, and tests look at libvirt's view through it.
"""

import contextlib
import threading

import libvirt

from aggregates.errors import StepFailedError

_lock = threading.Lock()
_connections: dict[str, libvirt.virConnect] = {}


def connection(uri: str) -> libvirt.virConnect:
    """The process's open connection to `uri`, opened on first use."""
    with _lock:
        conn = _connections.get(uri)
        if conn is not None and conn.isAlive():
            return conn
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise StepFailedError(f"cannot connect to host {uri}: {e.get_error_message()}",
                                  retryable=True, code="host_unreachable") from e
        _connections[uri] = conn
        return conn


def close_all() -> None:
    """Close every connection (at worker shutdown, and between tests)."""
    with _lock:
        for conn in _connections.values():
            with contextlib.suppress(libvirt.libvirtError):  # already gone
                conn.close()
        _connections.clear()

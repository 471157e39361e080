"""One libvirt connection per host URI for the whole process, shared by the plugins that use it.

A `test:///<file>.xml` URI is its own in-memory host: state made through one connection is not
seen by another, and a new connection starts again from the file. So every plugin in a worker
process (hypervisor, storage, network element, snapshot, backup) must use the same connection
per URI for the process's lifetime, and tests look at libvirt's view through it. Every
connection is opened with libvirt's event loop running (`events`).

`keep_simulated_hosts` makes such hosts outlive the process (see `simulation`): `up` and every
`cloudkernel worker` of a host-holding subsystem use it, so that a restart (even after a
SIGKILL) finds each simulated host as the last reported step left it. While it is open, the
hosts a step's thread reached are written through after the step, before its outcome is
published (`subsystems.base.step_settlers`).
"""

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import libvirt

from aggregates.errors import StepFailedError
from subsystems.base import step_settlers
from subsystems.libvirt.events import ensure_loop
from subsystems.libvirt.simulation import SimulatedHosts

_lock = threading.Lock()
_connections: dict[str, libvirt.virConnect] = {}
_simulated: SimulatedHosts | None = None
_reached = threading.local()  # .uris: the simulated hosts this thread reached since it settled


def connection(uri: str) -> libvirt.virConnect:
    """The process's open connection to `uri`, opened on first use."""
    simulated = _simulated
    if simulated is not None and simulated.used(uri):
        reached: set[str] | None = getattr(_reached, "uris", None)
        if reached is None:
            reached = _reached.uris = set()
        reached.add(uri)
    return _open(uri, simulated)


def _settle() -> None:
    """Write the simulated hosts this thread reached since it last settled (a step settler)."""
    reached: set[str] | None = getattr(_reached, "uris", None)
    simulated = _simulated
    if not reached or simulated is None:
        return
    uris = sorted(reached)
    reached.clear()
    simulated.write_through(uris)


def _open(uri: str, simulated: SimulatedHosts | None) -> libvirt.virConnect:
    with _lock:
        conn = _connections.get(uri)
        if conn is not None and conn.isAlive():
            return conn
        ensure_loop()  # before the first open: a connection gets events only with a loop
        try:
            conn = libvirt.open(simulated.open_uri(uri) if simulated is not None else uri)
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


@contextlib.contextmanager
def keep_simulated_hosts(folder: Path, *, interval: float = 1.0) -> Iterator[SimulatedHosts]:
    """While open, simulated (`test:///<file>.xml`) hosts are read from and written back to
    `folder`; at the end each is written a last time, so that the next process opens it as
    this one left it. A simulated host this process opened before from the inventory's file
    is reopened from its kept state. The flusher writes every `interval` seconds."""
    global _simulated
    if _simulated is not None:
        raise RuntimeError("simulated hosts are already kept by this process")
    kept = SimulatedHosts(folder, interval=interval)
    with _lock:
        for uri in [u for u in _connections if kept.open_uri(u) != u]:
            with contextlib.suppress(libvirt.libvirtError):
                _connections.pop(uri).close()
        _simulated = kept
    kept.start(lambda uri: _open(uri, kept))
    step_settlers.append(_settle)
    try:
        yield kept
    finally:
        step_settlers.remove(_settle)
        kept.close()
        _simulated = None

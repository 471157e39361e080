"""The domains' serial console logs on their hosts, reached through libvirt: a host's log
folder may not be this process's (another machine, or another mount namespace), so it is read
and cleaned as the volumes of a directory pool over it: one already defined over the folder,
else a transient one of ours that goes again after each use (a pool left over the host's log
folder would show its logs as volumes to anyone listing pools)."""

import contextlib
import posixpath
import threading
from collections.abc import Iterator
from xml.sax.saxutils import escape

import libvirt

from subsystems.libvirt.faults import is_not_found

__all__ = ["LOG_POOL", "log_pool", "remove_log"]

LOG_POOL = "cloudkernel-console-logs"
_lock = threading.Lock()  # one transient pool at a time in this process


@contextlib.contextmanager
def log_pool(conn: libvirt.virConnect, folder: str) -> Iterator[libvirt.virStoragePool]:
    """An active, refreshed directory pool over `folder` for the block's duration."""
    with _lock:
        pool, ours = None, False
        with contextlib.suppress(libvirt.libvirtError):
            pool = conn.storagePoolLookupByTargetPath(folder)
        if pool is None:
            xml = (f"<pool type='dir'><name>{LOG_POOL}</name><target><path>"
                   f"{escape(folder)}</path></target></pool>")
            try:
                pool, ours = conn.storagePoolCreateXML(xml, 0), True
            except libvirt.libvirtError:  # another process made it meanwhile
                pool = conn.storagePoolLookupByName(LOG_POOL)
        try:
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)
            yield pool
        finally:
            if ours:
                with contextlib.suppress(libvirt.libvirtError):
                    pool.destroy()  # transient: destroying it removes it


def remove_log(conn: libvirt.virConnect, path: str) -> bool:
    """Delete the log file at `path` on the connection's host; whether it was there."""
    folder, name = posixpath.split(path)
    with log_pool(conn, folder) as pool:
        try:
            pool.storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError as e:
            if is_not_found(e):
                return False
            raise
    return True

"""Simulated hosts that outlive the process: libvirt's test driver, written back to disk.

A `test:///<file>.xml` host keeps its state in the process that opened it, and a new
connection starts again from the file. On the embedded default (`cloudkernel up` with the
sample inventory) every host is such a file, so a restart of `up` would find every domain
gone or back in the file's state: the reconciler would then see Running VMs without their
domains. `SimulatedHosts` keeps a simulated host's state across restarts instead:

- it writes each host it serves to its own file under a state folder: the original file's
  node description (CPUs, memory) with the host's domains (`<test:runstate>` records whether
  each runs), networks, storage pools and their volumes, as the test driver reads them back;
- `connections.connection` opens a host from that file, when it exists, instead of the
  inventory's file;
- after each step, the hosts its thread reached are written through (`write_through`) before
  the step's outcome is published: a kill -9 loses only changes of steps whose outcome was
  never reported, and JetStream delivers those steps again to the next process, which finds
  the host as before them (or, for a kill between the write and the report, as after them:
  steps are idempotent). A flusher thread also writes the hosts touched recently (a
  `connection()` call marks a host) once a second, for changes made outside a step (the
  reconciler's, a test's), and `close()` writes every host a last time.
- a write happens only when the host's description changed, one writer per host at a time.

What the file cannot say: the test driver starts every network of the file active and every
storage pool active, so a network or pool that was defined but stopped comes back started.
Only one process may serve a simulated host from a state folder (`up` holds every worker in
one process; each `cloudkernel worker` keeps a folder of its own); two processes would each
keep their own copy, as the test driver always did.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

import libvirt

__all__ = ["FolderInUse", "SimulatedHosts", "is_simulated", "node_xml"]

_TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
# an object written back is replaced whole: these node children are the host's live state
_LIVE_CHILDREN = ("domain", "network", "pool")
# a host is watched this long after its last use: a step's calls end well within it
_WATCH_SECONDS = 60.0


def is_simulated(uri: str) -> bool:
    """Whether `uri` is a test-driver host read from a file (not the shared `test:///default`)."""
    parts = urlsplit(uri)
    return parts.scheme == "test" and parts.path.endswith(".xml")


def node_xml(conn: libvirt.virConnect, original: str) -> str:
    """The test driver's file for `conn`'s current state: the `original` file's node
    description with every domain (and whether it runs), network, pool and volume now there."""
    root = ET.fromstring(original)
    for child in [c for c in root if c.tag in _LIVE_CHILDREN]:
        root.remove(child)
    node = ET.tostring(root, encoding="unicode").rstrip()
    # the node's own text is re-used as written; the objects are libvirt's XML, appended whole
    # (keeping each object's namespace declarations, such as the platform's <metadata>)
    closing = node.rfind("</node>")
    head = node[:closing] if closing >= 0 else node.removesuffix("/>") + ">"
    if "xmlns:test=" not in head.split(">", 1)[0]:
        head = head.replace("<node", f'<node xmlns:test="{_TEST_NS}"', 1)
    parts = [head]
    for dom in sorted(conn.listAllDomains(), key=lambda d: d.name()):
        state = dom.state()[0]
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).rstrip()
        extra = f"<test:runstate>{state}</test:runstate>"
        if not dom.isPersistent():
            extra += "<test:transient/>"
        parts.append(xml.removesuffix("</domain>") + extra + "</domain>")
    for net in sorted(conn.listAllNetworks(), key=lambda n: n.name()):
        parts.append(net.XMLDesc(0).rstrip())
    for pool in sorted(conn.listAllStoragePools(), key=lambda p: p.name()):
        xml = pool.XMLDesc(0).rstrip()
        volumes = "".join(v.XMLDesc(0).rstrip()
                          for v in sorted(pool.listAllVolumes(), key=lambda v: v.name()))
        parts.append(xml.removesuffix("</pool>") + volumes + "</pool>")
    parts.append("</node>\n")
    return "\n".join(parts)


class FolderInUse(RuntimeError):
    """Another live process keeps its simulated hosts in this folder."""


class SimulatedHosts:
    """The state folder of a process's simulated hosts, and the thread that keeps it current."""

    def __init__(self, folder: Path, *, interval: float = 1.0) -> None:
        """Write hosts under `folder` (made if missing) every `interval` seconds. The folder is
        this process's until `close()` (a lock the system drops when the process dies):
        FolderInUse if another process holds it."""
        self.folder = folder
        self.interval = interval
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}  # uri -> monotonic time of its last use
        self._written: dict[str, str] = {}  # uri -> the description last written
        self._originals: dict[str, str] = {}  # uri -> the inventory's file for it
        self._writing: dict[str, threading.Lock] = {}  # uri -> held while it is written
        self._asked: dict[str, int] = {}  # uri -> write-throughs asked for so far
        self._covered: dict[str, int] = {}  # uri -> how many of those a write has covered
        self._connection: Callable[[str], libvirt.virConnect] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self._held = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._held)
            raise FolderInUse(f"simulated hosts in {folder} are kept by another process") \
                from None

    def state_file(self, uri: str) -> Path:
        """Where `uri`'s state is kept: the inventory file's name and a hash of the URI, so
        that two hosts with the same file name in different folders keep apart."""
        name = Path(urlsplit(uri).path).stem
        digest = hashlib.sha256(uri.encode()).hexdigest()[:10]
        return self.folder / f"{name}-{digest}.xml"

    def open_uri(self, uri: str) -> str:
        """The URI to open for `uri`: its kept state when there is one, else `uri` itself."""
        if not is_simulated(uri):
            return uri
        kept = self.state_file(uri)
        return f"test://{kept.resolve()}" if kept.exists() else uri

    def used(self, uri: str) -> bool:
        """Note that a step is about to use `uri`: the flusher watches it for a while.
        Whether `uri` is a simulated host (kept here)."""
        if not is_simulated(uri):
            return False
        with self._lock:
            self._used[uri] = time.monotonic()
        return True

    def write_through(self, uris: list[str]) -> None:
        """Write these hosts now, in this thread, if they changed; raises when one cannot be
        written (the step that changed it must then not be reported done)."""
        if self._connection is None:
            return
        for uri in uris:
            with self._lock:
                ticket = self._asked[uri] = self._asked.get(uri, 0) + 1
            self._write(uri, self._connection(uri), ticket)

    def start(self, connection: Callable[[str], libvirt.virConnect]) -> None:
        """Start writing hosts back, reaching them through `connection`."""
        self._connection = connection
        self._thread = threading.Thread(target=self._run, name="simulated-hosts", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher and write every host used since the start a last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush(everything=True)
        finally:
            os.close(self._held)  # the folder is free for the next process

    def flush(self, *, everything: bool = False) -> list[str]:
        """Write each host used in the last minute (`everything`: ever) whose description
        changed since it was last written; the URIs written."""
        now = time.monotonic()
        with self._lock:
            due = [u for u, t in self._used.items() if everything or now - t < _WATCH_SECONDS]
        if self._connection is None:
            return []
        written = []
        for uri in due:
            with contextlib.suppress(libvirt.libvirtError, OSError):  # next pass tries again
                if self._write(uri, self._connection(uri)):
                    written.append(uri)
        return written

    def _write(self, uri: str, conn: libvirt.virConnect, ticket: int = 0) -> bool:
        """Write `uri`'s description if it changed. `ticket`: the write-through asking for it;
        one that a write begun after it was asked covers already is done (several steps that
        end together on a host share one write, as commits share a flush)."""
        with self._lock:
            writing = self._writing.setdefault(uri, threading.Lock())
        # one writer per host: the description is read and written under the same lock, so
        # a later write never replaces the file with an older description
        with writing:
            with self._lock:
                if ticket and self._covered.get(uri, 0) >= ticket:
                    return False
                covering = self._asked.get(uri, 0)  # every change asked before now is made
            written = self._write_now(uri, conn)
            with self._lock:
                self._covered[uri] = max(self._covered.get(uri, 0), covering)
            return written

    def _write_now(self, uri: str, conn: libvirt.virConnect) -> bool:
        """Build the description and write it, if it differs from the last written (under
        the host's writing lock)."""
        original = self._originals.get(uri)
        if original is None:
            original = self._originals[uri] = Path(urlsplit(uri).path).read_text()
        text = node_xml(conn, original)
        if self._written.get(uri) == text:
            return False
        target = self.state_file(uri)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)  # a reader never sees half a file
        self._written[uri] = text
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

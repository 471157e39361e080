"""Read a real guest's serial console through libvirt, and the status lines its init prints.

`GuestConsole` holds the domain's console open (`virDomain.openConsole`) and keeps every
line. A thread of its own blocks in the stream's `recv`: the remote driver moves stream data
only while a call waits for it, so a non-blocking stream would need a libvirt event loop. The
guest prints every second, so the thread sees a request to stop within about a second.
When the qemu process goes away (the guest powered off, a stop, a destroy) the stream ends;
the reader opens the console again as soon as the domain runs again, so one reader follows a
VM through stop and start. A reboot keeps the qemu process, and the stream.

The guest of `support.guest_image` prints `CK-STATUS boot=... ip=... disks=... end` every
second; `wait_status` waits for one that satisfies a condition. Kernel messages may cut into
a line; such a line does not match and the next second's does.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

__all__ = ["GuestConsole", "GuestStatus"]

_STATUS = re.compile(r"CK-STATUS boot=([0-9a-f-]{36}) ip=(\S+) disks=(\S+) end")


@dataclass(frozen=True)
class GuestStatus:
    """One status line: the guest's boot id, eth0 address and disk sizes in bytes."""

    boot_id: str
    ip: str | None
    disks: dict[str, int]

    @classmethod
    def parse(cls, line: str) -> GuestStatus | None:
        """The status in a console line, or None when the line is no (whole) status line."""
        found = _STATUS.search(line)
        if found is None:
            return None
        boot, ip, disks = found.groups()
        sizes = {}
        for item in disks.split(","):
            name, _, size = item.partition(":")
            if name != "-" and size.isdigit():
                sizes[name] = int(size)
        return cls(boot_id=boot, ip=None if ip == "-" else ip, disks=sizes)


class GuestConsole:
    """Follows one domain's serial console; see the module docstring."""

    def __init__(self, uri: str, domain_uuid: str) -> None:
        """Open a connection of its own to `uri` and start reading in a thread."""
        self.uri, self.domain_uuid = uri, domain_uuid
        self._conn = libvirt.open(uri)
        self._lines: list[str] = []
        self._partial = b""
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"console-{domain_uuid}",
                                        daemon=True)
        self._thread.start()

    def lines(self) -> list[str]:
        """Every whole line read so far."""
        with self._changed:
            return list(self._lines)

    def text(self) -> str:
        """Everything read so far (for failure messages)."""
        return "\n".join(self.lines())

    def mark(self) -> int:
        """A position in the lines: `wait_status(since=...)` looks only at later lines."""
        with self._changed:
            return len(self._lines)

    def wait_line(self, predicate: Callable[[str], bool], *, since: int = 0,
                  timeout: float = 60.0) -> str:
        """The first line from `since` on that satisfies `predicate`; waits for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            index = since
            while True:
                while index < len(self._lines):
                    if predicate(self._lines[index]):
                        return self._lines[index]
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(self._lines[-40:])
                    raise AssertionError(f"no such console line within {timeout}s; last "
                                         f"lines of {self.domain_uuid}:\n{tail}")
                self._changed.wait(left)

    def wait_status(self, predicate: Callable[[GuestStatus], bool] = lambda _: True, *,
                    since: int = 0, timeout: float = 60.0) -> GuestStatus:
        """The first status line from `since` on that satisfies `predicate`."""
        def matches(line: str) -> bool:
            status = GuestStatus.parse(line)
            return status is not None and predicate(status)

        found = GuestStatus.parse(self.wait_line(matches, since=since, timeout=timeout))
        assert found is not None
        return found

    def close(self) -> None:
        """Stop reading and close the connection."""
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()

    def __enter__(self) -> GuestConsole:
        """The console itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close it."""
        self.close()

    # ----------------------------------------------------------------- internals

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = self._open()
            if stream is None:
                self._stop.wait(0.2)
                continue
            try:
                self._pump(stream)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()

    def _open(self) -> libvirt.virStream | None:
        """A stream on the running domain's console, or None while it does not run."""
        try:
            dom = self._conn.lookupByUUIDString(self.domain_uuid)
            if not dom.isActive():
                return None
            stream = self._conn.newStream(0)
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        except libvirt.libvirtError:
            return None  # undefined, or gone between the two calls
        return stream

    def _pump(self, stream: libvirt.virStream) -> None:
        while not self._stop.is_set():
            try:
                data = stream.recv(65536)
            except libvirt.libvirtError:
                return
            if not data:  # the domain's qemu went away
                return
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        *whole, self._partial = (self._partial + data).split(b"\n")
        if not whole:
            return
        with self._changed:
            self._lines += [line.decode(errors="replace").rstrip("\r") for line in whole]
            self._changed.notify_all()

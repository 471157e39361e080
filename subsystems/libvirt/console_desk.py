"""The libvirt side of the console desk: a VM's VNC screen, serial console, screenshot and
recent serial output, wherever its host is (the NATS and TCP side is
`gateways.stream.console_desk`; the contract `kernel.contracts.console`).

Every call finds the host by its URI and uses the process's one connection to it
(`connections.connection`). A failure is a `DeskRefusedError` whose code the desk answers:
`not_found` (no such domain), `unavailable` (not running, host unreachable, a call failed),
`busy` (someone else holds the serial console).

- **graphics**: over a local unix socket URI (`qemu:///system`, `qemu+unix://...`) libvirt
  hands over a socket its qemu already authenticated (`openGraphicsFD`, SKIPAUTH), so the VNC
  server offers security None; this also reaches a daemon in another network namespace. A
  remote URI cannot pass descriptors: the desk connects to the graphics address and port of
  the live definition, logs in with the password of the secure definition (the VM's derived
  one), and offers the console service security None itself (`rfb`).
- **serial**: a non-blocking libvirt stream of `openConsole`, without FORCE: forcing would
  silently cut the session of whoever holds the console (another admin's browser tab); the
  desk answers `busy` instead, and the holder must close first.
- Both are handed to the desk as a plain connected socket, so the desk only relays bytes
  between two sockets; closing that socket ends the libvirt stream (or closes the fd).
- **screenshot**: libvirt's screenshot call, converted to PNG (`screen_images`).
- **output**: no libvirt call gives a pty's history, so every serial console of a domain
  the plugin defines is also logged by virtlogd to `<console_log_dir>/<vm id>.serial.log`
  (`domain_xml`). That file is on the host, which may be another machine or (in the tests) a
  private mount namespace, so it is read through libvirt: a transient directory pool
  (`cloudkernel-console-logs`, or any pool already over that folder) and `download` of the
  volume's tail. The reality checker looks only at pools named like the model's, so it never
  reports this one. The default folder is /var/log/libvirt itself, not its qemu/: libvirtd
  makes qemu/ only when it starts its first domain, after virtlogd opened the domain's
  chardev logs, so on a fresh host (or a migration's target that never ran a domain) a log
  in qemu/ fails the start ("Unable to open file"); /var/log/libvirt must exist for the
  daemons to start at all. A folder set in the config must exist on every host.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from urllib.parse import urlsplit
from uuid import UUID
from xml.sax.saxutils import quoteattr

import libvirt

from aggregates.errors import StepFailedError
from kernel.contracts.console import DeskRefusedError, console_password
from subsystems.libvirt import domain_xml, rfb
from subsystems.libvirt.connections import connection
from subsystems.libvirt.faults import is_not_found, is_unsupported
from subsystems.libvirt.screen_images import ImageError, to_png
from subsystems.libvirt.serial_logs import log_pool

__all__ = ["DEFAULT_LOG_DIR", "LibvirtDesk", "serial_log_name"]

log = logging.getLogger(__name__)

DEFAULT_LOG_DIR = "/var/log/libvirt"  # DomainSettings.console_log_dir's default
_MAX_SCREENSHOT = 64 * 1024 * 1024
_CONNECT_SECONDS = 5.0
_SEND_SECONDS = 2.0  # how long the libvirt event loop may wait for the desk to take output
_REMOTE_TRANSPORTS = frozenset({"ssh", "libssh", "libssh2", "tls", "tcp"})
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def serial_log_name(vm_id: UUID) -> str:
    """The file name of a VM's serial log in the console log folder."""
    return f"{vm_id}.serial.log"


class LibvirtDesk:
    """Opens and reads VMs' consoles through libvirt (see the module docstring)."""

    def __init__(self, secret: bytes, *, log_dir: str = DEFAULT_LOG_DIR) -> None:
        """`secret` derives the VNC passwords a remote login needs; `log_dir` is where the
        domains' serial logs are written on their hosts."""
        self.secret = secret
        self.log_dir = log_dir.rstrip("/")

    # ----------------------------------------------------------------- checks

    def check(self, host_uri: str, vm_id: UUID, *, running: bool = True) -> None:
        """Refuse (DeskRefusedError) unless the VM's domain exists on the host (and runs)."""
        self._domain(host_uri, vm_id, running=running)

    # ----------------------------------------------------------------- sessions

    def graphics(self, host_uri: str, vm_id: UUID) -> socket.socket:
        """A socket connected to the domain's VNC server, its security handshake offering
        None (see the module docstring)."""
        _conn, dom = self._domain(host_uri, vm_id)
        if _passes_fds(host_uri):
            try:
                fd = dom.openGraphicsFD(0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
            except libvirt.libvirtError as e:
                if not is_unsupported(e):
                    raise _unavailable(f"open the graphics console of VM {vm_id}", e) from e
            else:
                return socket.socket(fileno=fd)
        return self._graphics_over_tcp(dom, host_uri, vm_id)

    def serial(self, host_uri: str, vm_id: UUID) -> socket.socket:
        """A socket that carries the domain's serial console both ways until either side
        closes; `busy` when another session holds the console."""
        conn, dom = self._domain(host_uri, vm_id)
        try:
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        except libvirt.libvirtError as e:
            raise _unavailable(f"open the serial console of VM {vm_id}", e) from e
        try:
            dom.openConsole(None, stream, 0)
        except libvirt.libvirtError as e:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            if "active console session" in (e.get_error_message() or "").lower():
                raise DeskRefusedError(f"the serial console of VM {vm_id} is in use by "
                                       "another session; close it first", code="busy") from e
            raise _unavailable(f"open the serial console of VM {vm_id}", e) from e
        ours, theirs = socket.socketpair()
        _SerialBridge(stream, ours, str(vm_id)).start()
        return theirs

    # ----------------------------------------------------------------- reads

    def screenshot(self, host_uri: str, vm_id: UUID) -> bytes:
        """A PNG of the domain's screen."""
        conn, dom = self._domain(host_uri, vm_id)
        what = f"take a screenshot of VM {vm_id}"
        try:
            stream = conn.newStream(0)
            mime = dom.screenshot(stream, 0)
            data = _read_stream(stream, _MAX_SCREENSHOT, what)
        except libvirt.libvirtError as e:
            raise _unavailable(what, e) from e
        try:
            return to_png(mime or "", data)
        except ImageError as e:
            raise DeskRefusedError(f"{what}: {e}", code="unavailable") from e

    def output(self, host_uri: str, vm_id: UUID, limit: int) -> bytes:
        """The last `limit` bytes the domain's serial console printed (also of a VM that
        stopped since: the log stays); empty when it printed nothing yet."""
        conn, _dom = self._domain(host_uri, vm_id, running=False)
        what = f"read the serial output of VM {vm_id}"
        if not self.log_dir:
            raise DeskRefusedError(f"{what}: serial consoles are not logged (the hypervisor's "
                                   "console_log_dir is empty)", code="unavailable")
        try:
            with log_pool(conn, self.log_dir) as pool:
                try:
                    vol = pool.storageVolLookupByName(serial_log_name(vm_id))
                except libvirt.libvirtError as e:
                    if is_not_found(e):
                        return b""
                    raise
                size = int(vol.info()[1])
                offset = max(0, size - limit)
                if size <= offset:
                    return b""
                stream = conn.newStream(0)
                vol.download(stream, offset, size - offset, 0)
                return _read_stream(stream, limit, what)[-limit:]
        except libvirt.libvirtError as e:
            raise _unavailable(what, e) from e

    # ----------------------------------------------------------------- internals

    def _domain(self, host_uri: str, vm_id: UUID, *, running: bool = True
                ) -> tuple[libvirt.virConnect, libvirt.virDomain]:
        try:
            conn = connection(host_uri)
        except StepFailedError as e:
            raise DeskRefusedError(str(e), code="unavailable") from e
        try:
            dom = conn.lookupByUUIDString(str(vm_id))
            active = dom.isActive()
        except libvirt.libvirtError as e:
            if is_not_found(e):
                raise DeskRefusedError(f"no VM {vm_id} on host {host_uri}",
                                       code="not_found") from e
            raise _unavailable(f"look up VM {vm_id}", e) from e
        if running and not active:
            raise DeskRefusedError(f"VM {vm_id} is not running", code="unavailable")
        return conn, dom

    def _graphics_over_tcp(self, dom: libvirt.virDomain, host_uri: str,
                           vm_id: UUID) -> socket.socket:
        what = f"open the graphics console of VM {vm_id}"
        try:
            secure = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
        except libvirt.libvirtError as e:
            raise _unavailable(what, e) from e
        vnc = [g for g in domain_xml.graphics_of(secure) if g.type == "vnc" and g.port]
        if not vnc:
            raise DeskRefusedError(f"{what}: it has no VNC console with a port",
                                   code="unavailable")
        gfx = vnc[0]
        host, remote = gfx.listen, urlsplit(host_uri).hostname or "127.0.0.1"
        if host in ("", "0.0.0.0", "::"):
            host = remote
        elif host in _LOOPBACK and remote not in _LOOPBACK:
            raise DeskRefusedError(f"{what}: it listens on the loopback address of host "
                                   f"{remote}, out of reach from here", code="unavailable")
        password = gfx.password or console_password(self.secret, vm_id)
        try:
            server = socket.create_connection((host, gfx.port), timeout=_CONNECT_SECONDS)
        except OSError as e:
            raise DeskRefusedError(f"{what}: cannot reach {host}:{gfx.port}: {e}",
                                   code="unavailable") from e
        try:
            rfb.login(server, password)
        except OSError as e:
            server.close()
            raise DeskRefusedError(f"{what}: {e}", code="unavailable") from e
        server.settimeout(None)
        ours, theirs = socket.socketpair()
        threading.Thread(target=_present_and_splice, args=(ours, server),
                         name=f"desk-vnc-{vm_id}", daemon=True).start()
        return theirs


class _SerialBridge:
    """Moves bytes between a non-blocking console stream and one end of a socket pair: the
    stream's output in libvirt's event loop (a callback), the socket's input in a thread.

    The stream ends when the console ends (the domain's qemu went away), or when the socket's
    input ends; then what the client typed last is sent first, and the stream is finished
    gracefully (an abort would drop it: a typed `exit` would never reach the guest). A
    socket that no longer takes output only stops the output: its input still drains.
    """

    def __init__(self, stream: libvirt.virStream, sock: socket.socket, name: str) -> None:
        self.stream, self.sock, self.name = stream, sock, name
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._watching = False

    def start(self) -> None:
        """Watch the stream, and start the thread that carries the socket's input."""
        self.sock.settimeout(_SEND_SECONDS)
        events = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
                  | libvirt.VIR_STREAM_EVENT_HANGUP)
        try:
            self.stream.eventAddCallback(events, self._on_event, None)
            self._watching = True
        except libvirt.libvirtError as e:
            self.close(graceful=False)
            self.sock.close()
            raise _unavailable(f"watch the serial console of VM {self.name}", e) from e
        threading.Thread(target=self._upstream, name=f"desk-serial-{self.name}",
                         daemon=True).start()

    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while not self._closed.is_set():
                try:
                    data = stream.recv(65536)
                except libvirt.libvirtError:
                    self.close(graceful=False)
                    return
                if isinstance(data, int):  # -2: nothing more now
                    break
                if not data:  # the domain's qemu went away
                    self.close(graceful=False)
                    return
                try:
                    self.sock.sendall(data)
                except OSError:  # nobody reads: stop the output, let the input drain
                    self._unwatch()
                    return
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self.close(graceful=False)

    def _upstream(self) -> None:
        graceful = True
        try:
            while not self._closed.is_set():
                try:
                    data = self.sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                while data and not self._closed.is_set():
                    sent = self.stream.send(data)
                    if sent == -2:  # the stream's buffer is full: wait a little
                        self._closed.wait(0.01)
                        continue
                    data = data[sent:]
        except libvirt.libvirtError as e:
            graceful = False
            log.info("serial console of VM %s: %s", self.name, e.get_error_message())
        finally:
            self.close(graceful=graceful)
            self.sock.close()

    def _unwatch(self) -> None:
        with self._lock:
            watching, self._watching = self._watching, False
        if watching:
            with contextlib.suppress(libvirt.libvirtError):
                self.stream.eventRemoveCallback()

    def close(self, *, graceful: bool) -> None:
        """End the libvirt stream (which frees the console) and the socket's traffic."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._unwatch()
        try:
            if not graceful:
                raise libvirt.libvirtError("abort")
            self.stream.finish()
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                self.stream.abort()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def _present_and_splice(client: socket.socket, server: socket.socket) -> None:
    """Offer the desk's side security None, then relay both ways until either side ends."""
    try:
        rfb.offer_none(client)
    except OSError:
        client.close()
        server.close()
        return
    threading.Thread(target=_pipe, args=(server, client), daemon=True).start()
    _pipe(client, server)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        source.close()


def _read_stream(stream: libvirt.virStream, limit: int, what: str) -> bytes:
    """Everything a blocking stream carries (at most `limit` bytes), then finish it."""
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            data = stream.recv(262144)
            if isinstance(data, int) or not data:
                break
            chunks.append(data)
            total += len(data)
            if total > limit:
                raise DeskRefusedError(f"{what}: more than {limit} bytes", code="unavailable")
        stream.finish()
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    return b"".join(chunks)


def _passes_fds(uri: str) -> bool:
    """Whether the URI's transport is a local unix socket, which can pass descriptors."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    if transport in _REMOTE_TRANSPORTS:
        return False
    return (parts.hostname or "localhost") in _LOOPBACK or transport == "unix"


def _unavailable(what: str, e: libvirt.libvirtError) -> DeskRefusedError:
    return DeskRefusedError(f"{what}: {e.get_error_message() or e}", code="unavailable")


def _text(value: str) -> str:
    """`value` escaped for XML text."""
    return quoteattr(value)[1:-1]

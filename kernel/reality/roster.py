"""The hosts to observe: every registered host's libvirt URI, followed from the log."""

from uuid import UUID

from aggregates.host import Host
from kernel.cloud.storage_pools import directory
from kernel.store.application import KernelApplication

HOST_TOPIC = "host.Registered"


class HostRoster:
    """Callable: the URIs of every host registered so far (a host's URI never changes)."""

    def __init__(self, app: KernelApplication) -> None:
        self.app = app
        self._uris: dict[UUID, str] = {}

    def __call__(self) -> list[str]:
        for host_id in directory(self.app, HOST_TOPIC).ids():
            if host_id not in self._uris:
                host: object = self.app.repository.get(host_id)
                if isinstance(host, Host):
                    self._uris[host_id] = host.uri
        return list(self._uris.values())

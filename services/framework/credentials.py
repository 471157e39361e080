"""A service's own key, as the platform wrote it for the service (`kernel.contracts.services`).

On the platform's machine `up` writes it before it starts the service; on another machine,
copy the file `cloudkernel services key NAME --out FILE` writes on the platform's machine to
`<data_dir>/services/<name>.key` there.
"""

from aggregates.errors import ConfigError
from kernel.contracts.services import (
    ServiceCredentials,
    credentials_path,
    read_credentials,
    require_service_name,
)
from kernel.settings import Settings

__all__ = ["ServiceCredentials", "service_credentials"]


def service_credentials(settings: Settings, name: str) -> ServiceCredentials:
    """The key kept for this service; ConfigError naming the file and the command that writes
    it when there is none."""
    require_service_name(name)
    path = credentials_path(settings.data_dir, name)
    kept = read_credentials(path)
    if kept is None:
        raise ConfigError(f"service {name}: no key in {path}; `cloudkernel services key {name} "
                          f"--out {path}` on the platform's machine writes it (`up` does so "
                          "for the services it starts)")
    return kept

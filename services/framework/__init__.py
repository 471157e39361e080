"""The Services Framework: write a service that runs beside the platform and talks to it
only through NATS.

A service is a separate process (the end-user API, the EC2 API, billing...). One
`ServiceRuntime` per process registers it in the Services Directory (`service.register`,
signed with the service's own key), heartbeats into the `CK_SERVICES` KV bucket (an instance
that stops heartbeating drops out after three heartbeats), follows the admin's
enable/disable switch, consumes public events with durable pull consumers (a restarted
service resumes after its last acked event), sends commands with idempotency keys and waits
for their operations through their public events. A minimal service:

    import asyncio
    from pathlib import Path
    from services.framework import ServiceRuntime, ServiceSpec, service_credentials
    from kernel.settings import load_settings

    async def main() -> None:
        settings = load_settings()
        spec = ServiceSpec(name="billing", version="1.0",
                           endpoints={"http": "http://127.0.0.1:8490/"},
                           consumes=("cloudkernel.events.vm.>",))
        # the key `cloudkernel services key billing --out <data_dir>/services/billing.key` wrote
        runtime = ServiceRuntime(spec, settings.nats_servers,
                                 credentials=service_credentials(settings, "billing"),
                                 data_dir=Path(settings.data_dir))

        async def on_vm_event(event):            # in log order, acked when it returns
            print(event.position, event.topic, event.data())

        runtime.consume("billing-vms", ["cloudkernel.events.vm.>"], on_vm_event)
        await runtime.start()                    # registered, first heartbeat sent
        stop = asyncio.Event()
        await runtime.run(stop)                  # heartbeats + consumers until stop

    asyncio.run(main())

See docs/services.md for commands, waiting for operations, system VMs and the directory's
NATS subjects.
"""

from services.framework.credentials import ServiceCredentials, service_credentials
from services.framework.framework import (
    CommandRefusedError,
    CommandResult,
    OperationOutcome,
    ServiceEvent,
    ServiceRuntime,
    ServiceSpec,
)

__all__ = ["CommandRefusedError", "CommandResult", "OperationOutcome", "ServiceCredentials",
           "ServiceEvent", "ServiceRuntime", "ServiceSpec", "service_credentials"]

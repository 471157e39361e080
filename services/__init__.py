"""The RFC's second layer: the services on top of the orchestration platform.

Each service (the ACL, the end-user API, the EC2 API, and later the console proxy, the router,
the template service and the object store) can be enabled, disabled and deployed on its own.
A service reaches the platform only through its public contracts (NATS commands and events,
the wire types in `kernel.contracts`, the ACL client) and the shared foundations (the error
root, the aggregate base, the settings and the event-store library); never the engine, the
platform's aggregates, the projections or the gateways. `services.framework` is what they all
run on: registration, liveness, durable consumers of the event stream, commands and hosting.
"""

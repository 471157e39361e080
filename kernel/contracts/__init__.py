"""The platform's public wire contracts: what crosses a process boundary, and nothing else.

Edges, workers, integrators and the services on top of the platform all speak these:
`steps` (kernel <-> subsystem workers), `events` (the public event stream), `access`
(signed requests and the access-control port), `services` (the directory and liveness), and
the NATS conventions every process shares (`connection`, `requests`). Nothing here imports
the engine, the platform's aggregates, the projections, the gateways or the services.
"""

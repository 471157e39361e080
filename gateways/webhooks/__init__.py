"""Webhooks: HTTP endpoints subscribed to event subjects, for integrators without NATS.

`store` keeps webhooks, deliveries and attempts; `intake` turns the EVENTS stream into
deliveries; `sender` posts them signed (`signing`), retried with backoff; `service` runs both.
"""

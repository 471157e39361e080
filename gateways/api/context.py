"""What the admin API's handlers share: the core's entry points, and the one bridge to them.

The core is synchronous (eventsourcing, psycopg, SQLite block), so every call into it goes
through `ApiContext.call`, which runs it in one bounded thread pool. The event loop only
moves bytes.
"""

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from gateways.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AccessControl,
    Principal,
    SignedRequest,
)
from gateways.stream.intake import Catalog
from kernel.commands import Command
from kernel.store.application import KernelApplication
from projections.runner import ProjectionRunner
from projections.views import RowView

T = TypeVar("T")
DEFAULT_THREADS = 32
DEFAULT_WAIT_TIMEOUT = 5.0


@dataclass
class ApiContext:
    """The engine's commands, the read models and access control, as the API uses them."""

    catalog: Catalog
    access: AccessControl
    app: KernelApplication
    runners: Mapping[str, ProjectionRunner]  # by read-model name; they need not be started
    threads: int = DEFAULT_THREADS
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    engine: Any = None  # the OperationEngine, for its command queue depth
    kernel_stats: Callable[[], Mapping[str, int]] | None = None
    drift_stats: Callable[[], Mapping[str, int]] | None = None
    executor: ThreadPoolExecutor = field(init=False)
    decoders: dict[str, msgspec.json.Decoder[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="api")
        self.decoders = {tag: msgspec.json.Decoder(type_)
                         for tag, (type_, _run) in self.catalog.items()}

    def view(self, name: str) -> RowView:
        """The read model with this name."""
        return self.runners[name].view

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking core call in the API's bounded thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor,
                                          functools.partial(fn, *args, **kwargs))

    def run_command(self, command: Command, key: str, actor: str) -> Any:
        """Run a decoded command (in a pool thread) under an idempotency key."""
        _type, run = self.catalog[str(type(command).__struct_config__.tag)]
        return run(command, idempotency_key=key, actor=actor)

    def close(self) -> None:
        """Wait for the calls in flight, then release the threads."""
        self.executor.shutdown(wait=True)


CONTEXT: web.AppKey[ApiContext] = web.AppKey("cloudkernel_api_context", ApiContext)
BEARER = "bearer "


def signed_subject(request: web.Request) -> str:
    """What an HTTP request's signature covers as its subject: `<METHOD> <path?query>`."""
    return f"{request.method} {request.raw_path}"


def authenticator(request: web.Request, body: bytes = b"") -> Callable[[], Principal]:
    """A blocking call (for the pool) that tells who sent the request: a bearer token, or a
    CK1-HMAC-SHA256 signature over it; UnauthenticatedError otherwise."""
    access = request.app[CONTEXT].access
    headers = request.headers
    authorization = headers.get("Authorization", "")
    if authorization[:len(BEARER)].lower() == BEARER:
        token = authorization[len(BEARER):].strip()
        return lambda: access.authenticate_bearer(token)
    signed = SignedRequest(subject=signed_subject(request),
                           idempotency_key=headers.get(IDEMPOTENCY_KEY_HEADER, ""), body=body,
                           key_id=headers.get(KEY_ID_HEADER, ""),
                           timestamp=headers.get(TIMESTAMP_HEADER, ""),
                           signature=headers.get(SIGNATURE_HEADER, ""))
    return lambda: access.authenticate(signed)

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
from eventsourcing.persistence import OperationalError as StoreOperationalError

from gateways.decision import (
    BearerToken,
    Catalog,
    Credentials,
    authenticate,
    command_decoders,
)
from kernel.commands import Command
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AccessControl,
    Principal,
    SignedRequest,
)
from kernel.store.application import KernelApplication
from projections.runner import ProjectionRunner
from projections.views import RowView

T = TypeVar("T")
DEFAULT_THREADS = 32
STORE_DEADLINE = 8.0  # seconds a request waits for the store before it is answered 503
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
    drift_stats: Callable[[], Mapping[str, int]] | None = None
    executor: ThreadPoolExecutor = field(init=False)
    decoders: dict[str, msgspec.json.Decoder[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="api")
        self.decoders = command_decoders(self.catalog)

    def view(self, name: str) -> RowView:
        """The read model with this name."""
        return self.runners[name].view

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking core call in the API's bounded thread pool. A call the store does
        not answer within STORE_DEADLINE seconds (PostgreSQL down: the driver's pool waits
        and retries for a minute) is answered as the store's unavailability (503) at once;
        the call itself ends in its thread (a command it was running applies at most once,
        as its idempotency key says)."""
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(running), STORE_DEADLINE)
        except TimeoutError:
            running.add_done_callback(_quiet)
            raise StoreOperationalError(f"the store did not answer within {STORE_DEADLINE:.0f} "
                                        "s") from None

    def run_command(self, command: Command, key: str, actor: str) -> Any:
        """Run a decoded command (in a pool thread) under an idempotency key."""
        _type, run = self.catalog[str(type(command).__struct_config__.tag)]
        return run(command, idempotency_key=key, actor=actor)

    def close(self) -> None:
        """Wait for the calls in flight, then release the threads."""
        self.executor.shutdown(wait=True)


def _quiet(done: asyncio.Future[Any]) -> None:
    """Consume a late call's outcome (its client was answered 503 already)."""
    if not done.cancelled():
        done.exception()


CONTEXT: web.AppKey[ApiContext] = web.AppKey("cloudkernel_api_context", ApiContext)
BEARER = "bearer "


def signed_subject(request: web.Request) -> str:
    """What an HTTP request's signature covers as its subject: `<METHOD> <path?query>`."""
    return f"{request.method} {request.raw_path}"


def request_credentials(request: web.Request, body: bytes = b"") -> Credentials:
    """What the request carries to say who sent it: a bearer token, or a CK1-HMAC-SHA256
    signature over it."""
    headers = request.headers
    authorization = headers.get("Authorization", "")
    if authorization[:len(BEARER)].lower() == BEARER:
        return BearerToken(authorization[len(BEARER):].strip())
    return SignedRequest(subject=signed_subject(request),
                         idempotency_key=headers.get(IDEMPOTENCY_KEY_HEADER, ""), body=body,
                         key_id=headers.get(KEY_ID_HEADER, ""),
                         timestamp=headers.get(TIMESTAMP_HEADER, ""),
                         signature=headers.get(SIGNATURE_HEADER, ""))


def authenticator(request: web.Request, body: bytes = b"") -> Callable[[], Principal]:
    """A blocking call (for the pool) that tells who sent the request: a bearer token, or a
    CK1-HMAC-SHA256 signature over it; UnauthenticatedError otherwise."""
    access = request.app[CONTEXT].access
    credentials = request_credentials(request, body)
    return lambda: authenticate(access, credentials)

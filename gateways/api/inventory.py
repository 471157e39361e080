"""Read routes: a paginated, filterable list and a GET per read model, read-your-writes aware.

`GET /v1/<model>?<filter>=<value>&limit=&after=&wait_for=` lists rows by key (keyset
pagination: `next` is the URL of the following page, null on the last), and
`GET /v1/<model>/<key>` reads one. `wait_for=<log position>` (what a mutating call returned)
first waits until the read model applied that position, so a caller reads its own writes.

Who may see what comes from `AccessControl.visible_accounts`: rows of models with an
`account` column are filtered to those accounts (another account's row is a 404); models
of the platform itself (hosts, operations, audit) need platform-wide visibility.
"""

import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import msgspec
from aiohttp import web

from aggregates.errors import ForbiddenError, NotFoundError
from gateways.api.context import CONTEXT, ApiContext, authenticator
from gateways.api.errors import ApiError
from kernel.contracts.access import Principal
from projections.catalog import MODELS
from projections.models import Row, RowModel
from projections.query import QueryError, coerce

MAX_LIMIT = 500
DEFAULT_LIMIT = 100
PAGING = ("limit", "after", "wait_for")
PLATFORM_MODELS = frozenset({"hosts", "operations", "audit"})
SINGULAR = {"vms": "vm", "volumes": "volume", "hosts": "host", "networks": "network",
            "snapshots": "snapshot", "templates": "template", "operations": "operation",
            "audit": "audit entry", "inventory": "inventory entry",
            "services": "service", "addresses": "public address",
            "address_pools": "public address pool"}

_encode = msgspec.json.Encoder().encode


class ListQuery(msgspec.Struct, frozen=True):
    """A checked list query."""

    limit: int
    after: Any
    wait_for: int | None
    filters: dict[str, Any]


def _int_param(name: str, text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ApiError("invalid", f"{name} must be an integer, got {text[:40]!r}",
                       field=name) from None
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ApiError("invalid", f"{name} must be {bound}, got {value}", field=name)
    return value


def _coerced(model: type[RowModel], name: str, text: str, field: str | None = None) -> Any:
    field = field or name
    if "\x00" in text:
        raise ApiError("invalid", f"{field} must not contain NUL characters", field=field)
    try:
        value = coerce(model, name, text)
    except QueryError as e:
        raise ApiError("invalid", f"{field}: {e}", field=field) from None
    if isinstance(value, int) and not -(2 ** 63) <= value < 2 ** 63:
        raise ApiError("invalid", f"{field} must fit in 64 bits, got {text[:40]}",
                       field=field)
    return value


def parse_list_query(model: type[RowModel], params: Any) -> ListQuery:
    """The list query in the URL's parameters; ApiError naming a bad or unknown one."""
    for name in params:
        if name not in PAGING and name not in model.filters:
            raise ApiError("invalid", f"unknown query parameter {name[:60]!r} for "
                           f"{model.name}; filters: {', '.join(model.filters) or 'none'}; "
                           f"paging: {', '.join(PAGING)}", field=name)
        if len(params.getall(name)) > 1:
            raise ApiError("invalid", f"query parameter {name} is given more than once",
                           field=name)
    limit = _int_param("limit", params["limit"], 1, MAX_LIMIT) if "limit" in params \
        else DEFAULT_LIMIT
    after = _coerced(model, model.key, params["after"], "after") if "after" in params else None
    wait_for = _int_param("wait_for", params["wait_for"], 0) if "wait_for" in params else None
    filters = {n: _coerced(model, n, params[n]) for n in model.filters if n in params}
    return ListQuery(limit, after, wait_for, filters)


def wait_for_position(ctx: ApiContext, name: str, position: int | None) -> None:
    """Block until read model `name` applied `position` (a log position a write returned)."""
    if position is None or position == 0:
        return
    runner = ctx.runners[name]
    head = runner.head()
    if position > head:
        # Well-formed, but the log has not reached it: a conflict with the log's state.
        raise ApiError("invalid", f"wait_for={position} is past the log's head ({head}); "
                       "pass a position a mutating call returned", field="wait_for",
                       status=409)
    try:
        runner.wait(position, timeout=ctx.wait_timeout)
    except TimeoutError:
        raise ApiError("wait_timeout", f"read model {name} did not reach position {position} "
                       f"within {ctx.wait_timeout:g} s (it is at {runner.position()}); "
                       "retry later", field="wait_for") from None


def _visible(ctx: ApiContext, principal: Principal, name: str,
             verb: str = "list") -> frozenset[str] | None:
    visible = ctx.access.visible_accounts(principal)
    if visible is not None and name in PLATFORM_MODELS:
        # Through authorize, so that the access control records the refusal.
        ctx.access.authorize(principal, f"{name}.{verb}")
        raise ForbiddenError(f"{principal.actor} may see only the resources of accounts "
                             f"{', '.join(sorted(visible)) or '(none)'}; {name} belong to "
                             "the platform")
    return visible


def list_json(ctx: ApiContext, name: str, query: ListQuery,
              visible: frozenset[str] | None) -> tuple[bytes, Any]:
    """A page the principal may see, as a JSON array of rows, and the key after which the
    next page starts. The read model's store builds the JSON itself unless the principal
    sees several accounts but not all (then rows are read and kept one by one)."""
    view = ctx.view(name)
    filters = _scoped_filters(view.model, dict(query.filters), visible)
    if filters is None:
        return b"[]", None
    if visible is not None and "account" not in filters \
            and any(c.name == "account" for c in view.model.columns):
        rows, after = _visible_rows(view, query, filters, visible)
        return _encode(rows), after
    page = view.list_json(after=query.after, limit=query.limit, **filters)
    return page.items, page.next_after


def _scoped_filters(model: Any, filters: dict[str, Any],
                    visible: frozenset[str] | None) -> dict[str, Any] | None:
    """The filters with the account pinned when the principal sees one account; None when
    it can see nothing the filters ask for."""
    if visible is None or not any(c.name == "account" for c in model.columns):
        return filters
    if "account" in filters:
        return filters if filters["account"] in visible else None
    if len(visible) <= 1:
        return {**filters, "account": next(iter(visible))} if visible else None
    return filters


def _visible_rows(view: Any, query: ListQuery, filters: dict[str, Any],
                  visible: frozenset[str] | None) -> tuple[list[Row], Any]:
    model = view.model
    # Several accounts: read pages and keep the visible rows (still keyset-ordered).
    rows: list[Row] = []
    after = query.after
    while len(rows) < query.limit:
        page = view.list(after=after, limit=MAX_LIMIT, **filters)
        for row in page.rows:
            if row["account"] in (visible or ()):
                rows.append(row)
                if len(rows) == query.limit:
                    return rows, row[model.key]
        if page.next_after is None:
            return rows, None
        after = page.next_after
    return rows, None


def _next_url(request: web.Request, after: Any) -> str | None:
    if after is None:
        return None
    params = [(k, v) for k, v in request.query.items() if k not in ("after", "wait_for")]
    return f"{request.path}?{urlencode([*params, ('after', str(after))])}"


def list_handler(name: str) -> Callable[[web.Request], Any]:
    """The handler of `GET /v1/<name>`."""
    model = MODELS[name]

    async def handle(request: web.Request) -> web.Response:
        ctx = request.app[CONTEXT]
        query = parse_list_query(model, request.query)
        who = authenticator(request)

        def read() -> bytes:
            visible = _visible(ctx, who(), name)
            wait_for_position(ctx, name, query.wait_for)
            items, after = list_json(ctx, name, query, visible)
            return b"".join((b'{"items":', items, b',"next":',
                             _encode(_next_url(request, after)), b',"next_after":',
                             _encode(None if after is None else str(after)), b"}"))

        return web.Response(body=await ctx.call(read), content_type="application/json")

    return handle


def read_one(ctx: ApiContext, principal: Principal, name: str, key_text: str,
             wait_for: int | None) -> Row:
    """The row with this key, if the principal may see it; NotFoundError otherwise."""
    model = MODELS[name]
    visible = _visible(ctx, principal, name, "get")
    wait_for_position(ctx, name, wait_for)
    try:
        key = None if "\x00" in key_text else coerce(model, model.key, key_text)
    except QueryError:
        key = None  # no row has a key of the wrong form: a plain 404
    if isinstance(key, int) and not -(2 ** 63) <= key < 2 ** 63:
        key = None  # nor one past 64 bits (the stores cannot even compare it)
    row = None if key is None else ctx.view(name).get(key)
    if row is not None and visible is not None and "account" in row \
            and row["account"] not in visible:
        # Another tenant's: answered as missing, but refused (and so audited) all the same.
        with contextlib.suppress(ForbiddenError):
            ctx.access.authorize(principal, f"{name}.get", owner=str(row["account"]))
        row = None
    if row is None:
        raise NotFoundError(f"no {SINGULAR[name]} {key_text[:80]!r}")
    return row


def one_wait_for(request: web.Request) -> int | None:
    """The `wait_for` parameter of a GET of one resource (the only one it takes)."""
    for param in request.query:
        if param != "wait_for":
            raise ApiError("invalid", f"unknown query parameter {param[:60]!r}; a GET of one "
                           "resource takes only wait_for", field=param)
    text = request.query.get("wait_for")
    return None if text is None else _int_param("wait_for", text, 0)


def get_handler(name: str) -> Callable[[web.Request], Any]:
    """The handler of `GET /v1/<name>/{id}`."""

    async def handle(request: web.Request) -> web.Response:
        ctx = request.app[CONTEXT]
        wait_for = one_wait_for(request)
        who = authenticator(request)
        key_text = request.match_info["id"]

        def read() -> bytes:
            return _encode(read_one(ctx, who(), name, key_text, wait_for))

        return web.Response(body=await ctx.call(read), content_type="application/json")

    return handle


def add_inventory_routes(app: web.Application) -> None:
    """Register the list and GET routes of every read model (operations' GET is its own)."""
    for name in MODELS:
        app.router.add_get(f"/v1/{name}", list_handler(name), name=f"list_{name}")
        if name != "operations":
            app.router.add_get(f"/v1/{name}/{{id}}", get_handler(name), name=f"get_{name}")

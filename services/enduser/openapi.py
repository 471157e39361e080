"""The End User API's OpenAPI 3.1 document, `GET /v1/openapi.json`, and its page `/v1/docs`.

Request bodies are the routes' own Structs; answers are the Structs below, whose fields are
what `render` writes (the schemathesis test checks live answers against them); every error
is the one shape of `errors.ApiError`. Built once per application, served without a token.
"""

from typing import Any

import msgspec
from aiohttp import web

from kernel.contracts.console import ConsoleTicketGrant
from kernel.contracts.docs_page import PAGE
from services.acl.client import AclPrincipal
from services.enduser.bodies import (
    IDEMPOTENCY_KEY,
    KEY_PATTERN,
    MAX_BODY,
    AttachBody,
    ConsoleBody,
    DeployBody,
    LoginBody,
    NoBody,
    VolumeBody,
)

REF = "#/components/schemas/{name}"
TITLE = "cloudkernel End User API"
OPENAPI_KEY: web.AppKey[bytes] = web.AppKey("cloudkernel_enduser_openapi", bytes)


class ErrorDetail(msgspec.Struct, kw_only=True):
    """A refusal: a stable code, a message, and the body field or header at fault."""

    code: str
    message: str
    field: str | None


class ErrorDocument(msgspec.Struct, kw_only=True):
    """Every error answer."""

    error: ErrorDetail


class LoginAnswer(msgspec.Struct, kw_only=True):
    """`POST /v1/login`: the bearer token and who it is."""

    token: str
    principal: AclPrincipal


class AttachedVolume(msgspec.Struct, kw_only=True):
    """A volume attached to a VM."""

    id: str
    device_id: int | None
    type: str


class Vm(msgspec.Struct, kw_only=True):
    """A VM of the caller's account (`volumes` in `GET /v1/vms/{id}` only)."""

    id: str
    name: str
    account: str
    state: str
    zone_id: str
    template_id: str
    offering_id: str
    root_volume_id: str | None
    last_error: str | None
    created_at: str
    updated_at: str
    volumes: list[AttachedVolume] = []


class Volume(msgspec.Struct, kw_only=True):
    """A volume of the caller's account; `vm_id` and `device_id` while attached."""

    id: str
    name: str
    account: str
    state: str
    type: str
    size_bytes: int
    vm_id: str | None
    device_id: int | None
    zone_id: str
    last_error: str | None
    created_at: str
    updated_at: str


class Operation(msgspec.Struct, kw_only=True):
    """An operation's outcome so far (`status` Running until it ended)."""

    id: str
    kind: str
    status: str
    finished: bool
    entity_ids: list[str]
    error_code: str | None
    message: str | None
    accepted_at: str
    finished_at: str | None


class VmPage(msgspec.Struct, kw_only=True):
    """The account's VMs."""

    items: list[Vm]


class VolumePage(msgspec.Struct, kw_only=True):
    """The account's volumes."""

    items: list[Volume]


class Zone(msgspec.Struct, kw_only=True):
    """A zone to deploy in."""

    id: str
    name: str


class Template(msgspec.Struct, kw_only=True):
    """A Ready template."""

    id: str
    name: str
    zone_id: str


class Offering(msgspec.Struct, kw_only=True):
    """A service offering (a VM's size)."""

    id: str
    name: str
    cpu_cores: int | None
    memory_mib: int | None


class DiskOffering(msgspec.Struct, kw_only=True):
    """A disk offering (a data volume's size)."""

    id: str
    name: str
    size_bytes: int | None


class Catalog(msgspec.Struct, kw_only=True):
    """What a tenant deploys from."""

    zones: list[Zone]
    templates: list[Template]
    offerings: list[Offering]
    disk_offerings: list[DiskOffering]


class Accepted(msgspec.Struct, kw_only=True):
    """A command the platform accepted: its result (`operation_id`, `vm_id`, `volume_id`...
    as the command gives them), whether it replayed an earlier one, and where to follow it."""

    replayed: bool
    operation_url: str | None
    operation_id: str | None = None


class Health(msgspec.Struct, kw_only=True):
    """`GET /healthz`: the process answers; `enabled` is the admin's switch."""

    status: str
    service: str
    enabled: bool


_STRUCTS = (LoginBody, DeployBody, VolumeBody, AttachBody, NoBody, ConsoleBody, ErrorDocument,
            LoginAnswer, Vm, Volume, Operation, VmPage, VolumePage, Catalog, Accepted, Health,
            ConsoleTicketGrant)


def _ref(struct: type) -> dict[str, Any]:
    return {"$ref": REF.format(name=struct.__name__)}


def _answer(description: str, struct: type) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(struct)}}}


_WHY = {400: "a malformed or invalid body or header, or a value the platform refused",
        401: "no, a bad or an expired bearer token (or, at login, bad credentials)",
        403: "the caller may not: a root admin has no tenant account, or the ACL refused",
        404: "no such resource in the caller's account (another account's ids answer so too)",
        409: "a conflict with the resource's state, or an Idempotency-Key reused with "
             "another body",
        413: f"a body over {MAX_BODY} bytes",
        502: "the platform or the ACL failed (the message has a reference)",
        503: "the service is disabled by the admin (Retry-After), or the ACL or the platform "
             "does not answer"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _answer(_WHY[s], ErrorDocument) for s in statuses}


_READ = (401, 403, 502, 503)
_CHANGE = (400, 401, 403, 404, 409, 413, 502, 503)
_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "string", "format": "uuid"}, "description": "the resource's id"}


def _key(required: bool) -> dict[str, Any]:
    return {"name": IDEMPOTENCY_KEY, "in": "header", "required": required,
            "schema": {"type": "string", "pattern": KEY_PATTERN.pattern},
            "description": "a key of your choice: a retry with the same key answers the first "
                           "result again" + ("" if required else " (default: a fresh key)")}


def _get(op_id: str, summary: str, answer: type, *, one: bool) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id, "summary": summary,
        "responses": {"200": _answer(summary, answer),
                      **_errors(*sorted((*_READ, 404) if one else _READ))}}
    if one:
        op["parameters"] = [_ID]
    return op


def _post(op_id: str, summary: str, body: type, *, key: bool = False,
          path_id: bool = True) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary,
            "parameters": [*([_ID] if path_id else []), _key(key)],
            "requestBody": {"required": body is not NoBody,
                            "content": {"application/json": {"schema": _ref(body)}}},
            "responses": {"202": _answer("accepted: follow `operation_url`", Accepted),
                          **_errors(*_CHANGE)}}


def openapi_document(version: str = "1") -> dict[str, Any]:
    """The whole document."""
    _refs, components = msgspec.json.schema_components(_STRUCTS, ref_template=REF)
    public: dict[str, Any] = {"security": []}
    paths: dict[str, dict[str, Any]] = {
        "/v1/login": {"post": {
            **public, "operationId": "login",
            "summary": "A bearer token for a user name and password",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref(LoginBody)}}},
            "responses": {"200": _answer("the token", LoginAnswer),
                          **_errors(400, 401, 403, 413, 502, 503)}}},
        "/v1/catalog": {"get": _get("catalog", "The zones, Ready templates and offerings",
                                    Catalog, one=False)},
        "/v1/vms": {"get": _get("list_vms", "The account's VMs", VmPage, one=False),
                    "post": _post("deploy_vm", "Deploy a VM in the caller's account",
                                  DeployBody, key=True, path_id=False)},
        "/v1/vms/{id}": {"get": _get("get_vm", "One VM with its volumes", Vm, one=True)},
        **{f"/v1/vms/{{id}}/{action}": {"post": _post(f"{action}_vm", f"{action} the VM",
                                                      NoBody)}
           for action in ("start", "stop", "destroy")},
        "/v1/vms/{id}/console": {"post": {
            **_post("open_console", "A single-use link to the VM's console (a Running VM; "
                    "`kind` graphics, serial, screenshot or output), valid about a minute",
                    ConsoleBody),
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": _ref(ConsoleBody)}}},
            "responses": {"201": _answer("the link: open `url` before `expires_at`",
                                         ConsoleTicketGrant),
                          **_errors(*_CHANGE)}}},
        "/v1/volumes": {"get": _get("list_volumes", "The account's volumes", VolumePage,
                                    one=False),
                        "post": _post("create_volume", "Create a data volume (attached to "
                                      "a Running VM of the account with `vm_id`)",
                                      VolumeBody, key=True, path_id=False)},
        "/v1/volumes/{id}": {
            "get": _get("get_volume", "One volume", Volume, one=True),
            "delete": {"operationId": "delete_volume", "summary": "Delete a detached volume",
                       "parameters": [_ID, _key(False)],
                       "responses": {"202": _answer("accepted", Accepted),
                                     **_errors(400, 401, 403, 404, 409, 502, 503)}}},
        "/v1/volumes/{id}/attach": {"post": _post("attach_volume", "Attach the volume to a "
                                                  "VM of the account", AttachBody)},
        "/v1/volumes/{id}/detach": {"post": _post("detach_volume", "Detach the volume",
                                                  NoBody)},
        "/v1/operations/{id}": {"get": _get("get_operation", "An operation on one of the "
                                            "account's VMs or volumes", Operation, one=True)},
        "/v1/openapi.json": {"get": {**public, "operationId": "openapi",
                                     "summary": "This document",
                                     "responses": {"200": {
                                         "description": "OpenAPI 3.1",
                                         "content": {"application/json": {"schema": {
                                             "type": "object"}}}}}}},
        "/v1/docs": {"get": {**public, "operationId": "docs",
                             "summary": "A page rendering this document (offline)",
                             "responses": {"200": {"description": "HTML", "content": {
                                 "text/html": {"schema": {"type": "string"}}}}}}},
        "/": {"get": {**public, "operationId": "page",
                      "summary": "A tenant's page: log in, your VMs, their consoles",
                      "responses": {"200": {"description": "HTML", "content": {
                          "text/html": {"schema": {"type": "string"}}}}}}},
        "/v1/page.js": {"get": {**public, "operationId": "page_script",
                                "summary": "The tenant page's script",
                                "responses": {"200": {"description": "JavaScript", "content": {
                                    "text/javascript": {"schema": {"type": "string"}}}}}}},
        "/healthz": {"get": {**public, "operationId": "healthz",
                             "summary": "Whether the service answers and is enabled",
                             "responses": {
                                 "200": _answer("up and enabled", Health),
                                 "503": _answer("up but disabled by the admin", Health)}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": version, "description": _DESCRIPTION},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {
                           "type": "http", "scheme": "bearer",
                           "description": "the token of POST /v1/login"}}},
    }


_DESCRIPTION = (
    "A tenant's own VMs and volumes. Log in with `POST /v1/login` and send "
    "`Authorization: Bearer <token>`; a tenant sees and acts on its own account only (another "
    "account's ids answer 404). Changes answer 202 with the operation to follow "
    "(`operation_url`); creating needs an `Idempotency-Key` header. Errors are "
    "`{\"error\": {\"code\", \"message\", \"field\"}}`. While the admin disabled the service "
    "every call but this document, /v1/docs, the page (/ and /v1/page.js) and /healthz answers "
    "503 service_disabled.")


async def openapi_json(request: web.Request) -> web.Response:
    """`GET /v1/openapi.json`."""
    return web.Response(body=request.app[OPENAPI_KEY], content_type="application/json")


_PAGE = PAGE.replace("cloudkernel admin API", TITLE).replace(".post{", ".delete{color:#cf222e}"
                                                             ".post{")


async def docs_page(_: web.Request) -> web.Response:
    """`GET /v1/docs`: the admin API's self-contained page, on this document."""
    return web.Response(text=_PAGE, content_type="text/html")


def add_routes(app: web.Application, version: str = "1") -> None:
    """Serve the document and its page on `app`."""
    app[OPENAPI_KEY] = msgspec.json.encode(openapi_document(version))
    app.router.add_get("/v1/openapi.json", openapi_json)
    app.router.add_get("/v1/docs", docs_page)

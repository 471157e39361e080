"""The OpenAPI 3.1 document of the admin API, generated once from the code it describes.

Command bodies come from the command Structs (`msgspec.json.schema_components`), rows from
the read models' typed columns, answers and errors from the API's own Structs. Nothing is
written by hand twice, so the document cannot drift from what the server accepts: what the
gateway itself refuses of a body (a NUL in any string, `gateways.decision`) is stated on
every string of the command bodies, a body is required when it has required fields, and
every status the server answers is declared (schemathesis checks both ways, with all its
checks, in tests/integration/test_api_schemathesis.py).
"""

import copy
from collections.abc import Mapping
from typing import Any

import msgspec

from gateways.api.commands import RESOURCE_ROUTES, Accepted
from gateways.api.errors import RETRY_AFTER_HEADER, STATUS, ErrorDocument
from gateways.api.inventory import DEFAULT_LIMIT, MAX_LIMIT, PLATFORM_MODELS, SINGULAR
from gateways.api.operations import StepView
from gateways.decision import Catalog
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
)
from projections.catalog import MODELS
from projections.models import FLOAT_T, INT_T, JSON_T, TEXT_T, TS_T, UUID_T, RowModel

REF = "#/components/schemas/{name}"
INT64 = {"type": "integer", "minimum": -(2 ** 63), "maximum": 2 ** 63 - 1}
_TYPES: dict[str, dict[str, Any]] = {
    UUID_T: {"type": "string", "format": "uuid"}, TEXT_T: {"type": "string"},
    INT_T: INT64, FLOAT_T: {"type": "number"},
    TS_T: {"type": "string", "format": "date-time"}, JSON_T: {},
}


def _column_schema(kind: str, nullable: bool) -> dict[str, Any]:
    schema = dict(_TYPES[kind])
    if nullable and schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


def row_schema(model: type[RowModel]) -> dict[str, Any]:
    """The JSON schema of a read model's row."""
    return {"title": f"{model.name} row", "type": "object",
            "properties": {c.name: _column_schema(c.type, c.nullable) for c in model.columns},
            "required": list(model.column_names())}


def _error(status: int, what: str) -> dict[str, Any]:
    return {"description": what,
            "content": {"application/json": {"schema": {"$ref": REF.format(
                name="ErrorDocument")}}}}


_UNAVAILABLE = {**_error(503, "unavailable: the event store cannot serve now (PostgreSQL "
                            "restarting, say); retry after Retry-After seconds (a command "
                            "with the same Idempotency-Key, which applies it at most once)"),
                "headers": {RETRY_AFTER_HEADER: {"required": True, "description":
                                                 "seconds to wait before retrying",
                                                 "schema": {"type": "string",
                                                            "pattern": "^[0-9]+$"}}}}
_AUTH_ERRORS = {"401": _error(401, "unauthenticated"), "403": _error(403, "forbidden"),
                "503": _UNAVAILABLE,
                "default": _error(500, "any other error, with a stable code")}
# What the gateway refuses in any string of a command (gateways.decision: PostgreSQL text
# cannot hold a NUL), stated on every string of the command bodies.
NO_NUL = "^[^\\x00]*$"
JSON_VALUE = "JsonValue"


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(name=ref)}}}}


def _param(name: str, where: str, schema: dict[str, Any], description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema,
            "description": description}


_SIGNING = [
    _param(KEY_ID_HEADER, "header", {"type": "string"}, "the key id (signed requests)"),
    _param(TIMESTAMP_HEADER, "header", {"type": "string"}, "unix seconds (signed requests)"),
    _param(SIGNATURE_HEADER, "header", {"type": "string"},
           "hex HMAC-SHA256 of CK1-HMAC-SHA256\\n{timestamp}\\n{METHOD path?query}\\n"
           "{idempotency key}\\n{sha256(body)}"),
]
_WAIT = _param("wait_for", "query", {"type": "integer", "minimum": 0},
               "a log position a mutating call returned: wait until this read model applied "
               "it (504 wait_timeout if it does not in time)")


def _list_operation(name: str, model: type[RowModel]) -> dict[str, Any]:
    types = {c.name: c for c in model.columns}

    def schema(column: str) -> dict[str, Any]:  # a filter's text may not hold a NUL
        kind = types[column].type
        return {**_TYPES[kind], "pattern": NO_NUL} if kind == TEXT_T else _TYPES[kind]

    params = [
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
               f"rows per page (default {DEFAULT_LIMIT})"),
        _param("after", "query", schema(model.key),
               f"keyset cursor: list rows whose {model.key} is after this one"),
        _WAIT,
        *(_param(f, "query", schema(f), f"only rows whose {f} equals this")
          for f in model.filters),
    ]
    scope = " Needs platform-wide visibility." if name in PLATFORM_MODELS else ""
    return {"operationId": f"list_{name}", "tags": [name],
            "summary": f"List {name} from the read model, by {model.key}.{scope}",
            "parameters": params,
            "responses": {"200": _json(f"{name}_page", f"a page of {name}"),
                          "409": _error(409, "wait_for is past the log's head"),
                          "422": _error(422, "a bad query parameter"),
                          "504": _error(504, "wait_for not reached in time"), **_AUTH_ERRORS}}


def _get_operation(name: str, model: type[RowModel], ref: str) -> dict[str, Any]:
    key = next(c for c in model.columns if c.name == model.key)
    return {"operationId": f"get_{name}", "tags": [name],
            "summary": f"One {SINGULAR[name]} by {model.key}",
            "parameters": [_param("id", "path", _TYPES[key.type], model.key, True), _WAIT],
            "responses": {"200": _json(ref, f"the {SINGULAR[name]}"),
                          "404": _error(404, f"no such {SINGULAR[name]} visible to you"),
                          "409": _error(409, "wait_for is past the log's head"),
                          "422": _error(422, "a bad query parameter"),
                          "504": _error(504, "wait_for not reached in time"), **_AUTH_ERRORS}}


def _without_nul(schema: Any) -> Any:
    """The schema with every string refusing NUL (a pattern, or `propertyNames` for an
    object's keys) and every free-form value (`{}`) a JSON value without NUL in any string."""
    if isinstance(schema, list):
        return [_without_nul(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema == {}:
        return {"$ref": REF.format(name=JSON_VALUE)}
    out = {k: v if k in ("default", "enum", "const", "examples") else _without_nul(v)
           for k, v in schema.items()}
    if out.get("type") == "string" and "format" not in out and "enum" not in out:
        if "pattern" in out:
            out = {"allOf": [out, {"pattern": NO_NUL}]}
        else:
            out["pattern"] = NO_NUL
    if out.get("type") == "object":  # a map's keys, and the extra keys a Struct ignores
        out["propertyNames"] = {"pattern": NO_NUL}
        out.setdefault("additionalProperties", {"$ref": REF.format(name=JSON_VALUE)})
    return out


_JSON_VALUE_SCHEMA = {
    "description": "any JSON value without a NUL character in any string or key",
    "anyOf": [{"type": ["null", "boolean", "number"]},
              {"type": "string", "pattern": NO_NUL},
              {"type": "array", "items": {"$ref": REF.format(name=JSON_VALUE)}},
              {"type": "object", "propertyNames": {"pattern": NO_NUL},
               "additionalProperties": {"$ref": REF.format(name=JSON_VALUE)}}]}


def _body_schema(component: dict[str, Any], id_field: str | None) -> dict[str, Any]:
    """A command's body: `command` optional, the path's id field left out."""
    body = copy.deepcopy(component)
    body["required"] = [r for r in body.get("required", ()) if r not in ("command", id_field)]
    if id_field is not None:
        body["properties"].pop(id_field, None)
    if not body["required"]:
        body.pop("required")
    body["additionalProperties"] = False
    return body


def _command_operation(tag: str, op_id: str, schema: dict[str, Any], summary: str,
                       path_param: dict[str, Any] | None,
                       status: int | None = None) -> dict[str, Any]:
    params = [_param(IDEMPOTENCY_KEY_HEADER, "header",
                     {"type": "string", "pattern": "^[!-~]{1,120}$"},
                     "the same key and body answer the first result again; another body "
                     "is refused (409 idempotency_key_reused); default: a fresh key"),
              *_SIGNING]
    if path_param is not None:
        params.insert(0, path_param)
    # Without a body the command has only the path's id: required when it needs more.
    required = bool(schema.get("required"))
    created = {} if status is None else {
        str(status): _json("Accepted", "the command ran and created what `result` holds")}
    return {"operationId": op_id, "tags": [tag.split(".")[0]], "summary": summary,
            "parameters": params,
            "requestBody": {"required": required,
                            "content": {"application/json": {"schema": schema}}},
            "responses": {**created,
                          "202": _json("Accepted", "the operation was accepted (Location "
                                                   "names it)"),
                          "200": _json("Accepted", "the command ran (no operation)"),
                          "400": _error(400, "malformed body or header"),
                          "404": _error(404, "unknown command or target"),
                          "409": _error(409, "invalid: refused by the platform's rules or "
                                             "state (a referenced entity missing or in the "
                                             "wrong state), a conflict, or a reused key"),
                          "415": _error(415, "the body is not JSON"), **_AUTH_ERRORS}}


def openapi_document(catalog: Catalog, *, title: str = "cloudkernel admin API",
                     version: str = "1") -> dict[str, Any]:
    """The whole document for this catalog's commands and every read model."""
    types = [type_ for _tag, (type_, _run) in sorted(catalog.items())]
    refs, bodies = msgspec.json.schema_components(types, ref_template=REF)
    _, components = msgspec.json.schema_components([Accepted, ErrorDocument, StepView],
                                                   ref_template=REF)
    assert not set(bodies) & set(components), set(bodies) & set(components)
    components.update({name: _without_nul(schema) for name, schema in bodies.items()})
    components[JSON_VALUE] = _JSON_VALUE_SCHEMA
    by_tag = {tag: str(ref["$ref"]).rsplit("/", 1)[-1]
              for (tag, _), ref in zip(sorted(catalog.items()), refs, strict=False)}
    paths: dict[str, dict[str, Any]] = {}
    for name, model in MODELS.items():
        components[f"{name}_row"] = row_schema(model)
        components[f"{name}_page"] = {
            "type": "object", "required": ["items", "next", "next_after"],
            "properties": {"items": {"type": "array", "items": {"$ref": REF.format(
                name=f"{name}_row")}},
                "next": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "next_after": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}
        paths[f"/v1/{name}"] = {"get": _list_operation(name, model)}
        ref = f"{name}_row"
        if name == "operations":
            components["operation_detail"] = {
                "type": "object", "required": ["id", "kind", "state", "steps"],
                "properties": {"id": _TYPES[UUID_T], "kind": {"type": "string"},
                               "state": {"type": "string"},
                               "steps": {"type": "array", "items": {
                                   "$ref": REF.format(name="StepView")}}}}
            ref = "operation_detail"
        paths[f"/v1/{name}/{{id}}"] = {"get": _get_operation(name, model, ref)}
    for tag, component in sorted(by_tag.items()):
        schema = _body_schema(components[component], None)
        description = components[component].get("description", tag)
        paths[f"/v1/commands/{tag}"] = {"post": _command_operation(
            tag, f"command_{tag.replace('.', '_')}", schema, f"{tag}: {description}", None)}
    for route in RESOURCE_ROUTES:
        if route.tag not in by_tag:
            continue
        component = components[by_tag[route.tag]]
        schema = _body_schema(component, route.id_field)
        path_param = None if route.id_field is None else _param(
            "id", "path", {"type": "string", "format": "uuid"}, route.id_field, True)
        paths.setdefault(route.path, {})["post"] = _command_operation(
            route.tag, "resource_" + route.tag.replace(".", "_"), schema,
            f"{route.tag}: {component.get('description', '')}", path_param, route.status)
    paths["/healthz"] = {"get": {"operationId": "healthz", "summary": "component states",
                                 "responses": {"200": {"description": "healthy"},
                                               "503": {"description": "the store is down"}}}}
    paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text format 0.0.4"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": _DESCRIPTION},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


_DESCRIPTION = (
    "Every /v1 call is authenticated: `Authorization: Bearer <token>`, or signed with "
    "CK1-HMAC-SHA256 (headers Cloudkernel-Key-Id, Cloudkernel-Timestamp, "
    "Cloudkernel-Signature; the subject is `<METHOD> <path?query>`). Mutating calls answer "
    "202 with the operation's URL and the log position they wrote (`position`, header "
    "Cloudkernel-Position): pass it as `wait_for` to read your own writes. Errors are "
    "`{\"error\": {\"code\", \"message\", \"field\"?}}`; codes: " + ", ".join(sorted(STATUS)))


def encoded_document(catalog: Mapping[str, Any]) -> bytes:
    """The document as JSON bytes, built once at start."""
    return msgspec.json.encode(openapi_document(catalog))

"""The End User API's OpenAPI document: it names every route the app serves and no other, it
is valid OpenAPI 3.1, the answers of the routes match its schemas, and it, its page and the
health check are served without a token (the health check answering 503 while disabled)."""

import asyncio
import copy
import itertools
import re
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.definitions import OPENAPI_31

from services.enduser.auth import Authenticator
from services.enduser.openapi import openapi_document
from services.enduser.routes import EndUser, make_app
from services.framework.tenant_view import TenantView

from .test_enduser_routes import (
    ALICE_VM,
    ALICE_VOLUME,
    OPERATION,
    FakeAcl,
    FakeRuntime,
    events,
)

METHODS = ("get", "post", "put", "patch", "delete")
_GROUP = re.compile(r"\(\?P<(\w+)>([^()]*)\)")


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route, a `{name:a|b}` route as one path per alternative."""
    out: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        if "path" in info:
            out.add((route.method.lower(), info["path"]))
            continue
        pattern = info["pattern"].pattern
        groups = _GROUP.findall(pattern)
        options = [[f"{{{name}}}"] if "[" in body or "\\" in body else body.split("|")
                   for name, body in groups]
        for choice in itertools.product(*options):
            path = pattern
            for value in choice:
                path = _GROUP.sub(value, path, count=1)
            out.add((route.method.lower(), path))
    return out


def document_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of every operation in the document."""
    return {(method, path) for path, item in doc["paths"].items()
            for method in item if method in METHODS}


def test_the_document_names_every_route_and_no_other() -> None:
    served = served_routes(make_app(None))  # type: ignore[arg-type]
    documented = document_routes(openapi_document())
    assert ("post", "/v1/vms/{id}/destroy") in served and ("get", "/healthz") in served
    assert served == documented, (served - documented, documented - served)


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document()
    errors = sorted(e.message for e in Draft202012Validator(OPENAPI_31).iter_errors(doc))
    assert not errors, errors
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        assert schema.get("description"), name
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(document_routes(doc))
    for path, item in doc["paths"].items():
        for method, op in item.items():
            errors = {s for s in op["responses"] if s.startswith(("4", "5"))}
            if op.get("security") != []:  # needs a token: refused without one, never a 500
                assert {"401", "403", "503"} <= errors, (method, path)
            assert "500" not in op["responses"], (method, path)


def strict(doc: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator of component `name` that refuses fields the document does not name."""
    components = copy.deepcopy(doc["components"])
    for component, schema in components["schemas"].items():
        if schema.get("type") == "object" and component != "Accepted":
            schema["additionalProperties"] = False
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                 "components": components})


def test_the_answers_match_the_document_and_the_public_routes(tmp_path: Path) -> None:
    view = TenantView(tmp_path / "view.db")
    for event in events():
        view.apply(event)
    runtime = FakeRuntime()
    doc = msgspec.json.decode(msgspec.json.encode(openapi_document()))

    async def main() -> None:
        app = make_app(EndUser(runtime=runtime, auth=Authenticator(FakeAcl()), view=view))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        alice = {"Authorization": "Bearer t-alice"}
        try:
            for method, path, status, headers in (
                    ("GET", "/v1/openapi.json", 200, {}), ("GET", "/v1/docs", 200, {}),
                    ("GET", "/healthz", 200, {}), ("GET", "/v1/catalog", 200, alice),
                    ("GET", "/v1/vms", 200, alice), ("GET", f"/v1/vms/{ALICE_VM}", 200, alice),
                    ("GET", "/v1/volumes", 200, alice),
                    ("GET", f"/v1/volumes/{ALICE_VOLUME}", 200, alice),
                    ("GET", f"/v1/operations/{OPERATION}", 200, alice),
                    ("POST", f"/v1/vms/{ALICE_VM}/stop", 202, alice),
                    ("POST", "/v1/login", 401, {}), ("GET", "/v1/vms", 401, {}),
                    ("GET", f"/v1/vms/{UUID(int=1)}", 404, alice),
                    ("POST", "/v1/volumes", 400, alice)):
                r = await client.request(method, path, headers=headers,
                                         json={"username": "alice", "password": "x"}
                                         if path == "/v1/login" else None)
                assert r.status == status, (path, await r.text())
                if path == "/v1/docs":
                    page = await r.text()
                    assert "/v1/openapi.json" in page and "End User API" in page
                    assert not re.search(r"(src|href)=\"https?:", page)  # offline: no CDN
                    continue
                answer = await r.json()
                if path == "/v1/openapi.json":
                    assert answer == doc
                    continue
                ref = doc["paths"][path if path in doc["paths"] else re.sub(
                    r"/[0-9a-f-]{36}", "/{id}", path)][method.lower()]["responses"][
                    str(status)]["content"]["application/json"]["schema"]["$ref"]
                errors = list(strict(doc, ref.rsplit("/", 1)[-1]).iter_errors(answer))
                assert not errors, (path, answer, [e.message for e in errors])
            assert (await client.get("/v1/vms/" + str(ALICE_VM), headers=alice)).status == 200

            runtime.enabled = False
            r = await client.get("/healthz")
            assert (r.status, await r.json()) == (503, {"status": "ok", "service": "enduser",
                                                        "enabled": False})
            assert (await client.get("/v1/openapi.json")).status == 200
            assert (await client.get("/v1/docs")).status == 200
            assert (await client.get("/v1/vms", headers=alice)).status == 503
        finally:
            await client.close()

    try:
        asyncio.run(main())
    finally:
        view.close()

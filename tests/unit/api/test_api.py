"""The admin API on SQLite: reads, commands, idempotency, errors, docs, health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest

from gateways.api.context import ApiContext
from tests.unit.api.conftest import Api

Run = Callable[[Callable[[Api], Any]], None]


def test_lists_every_read_model_and_gets_one(run_api: Run) -> None:
    async def scenario(api: Api) -> None:
        for name in ("vms", "volumes", "hosts", "networks", "snapshots", "templates",
                     "operations", "audit"):
            status, page = await api.json("GET", f"/v1/{name}")
            assert status == 200, page
            assert set(page) == {"items", "next", "next_after"}
        status, page = await api.json("GET", "/v1/hosts?limit=3")
        assert len(page["items"]) == 3 and page["next"].startswith("/v1/hosts?")
        seen = [h["id"] for h in page["items"]]
        while page["next"]:
            status, page = await api.json("GET", page["next"])
            seen += [h["id"] for h in page["items"]]
        assert len(seen) == len(set(seen)) == 8 and seen == sorted(seen)
        status, host = await api.json("GET", f"/v1/hosts/{seen[0]}")
        assert status == 200 and host["id"] == seen[0]
        zone = str(api.ids["zone"])
        status, page = await api.json("GET", f"/v1/hosts?zone_id={zone}&limit=500")
        assert status == 200 and len(page["items"]) == 8
        status, err = await api.json("GET", "/v1/hosts/00000000-0000-0000-0000-000000000000")
        assert status == 404 and err["error"]["code"] == "not_found"

    run_api(scenario)


def test_bad_queries_name_the_parameter(run_api: Run) -> None:
    async def scenario(api: Api) -> None:
        for query, field in (("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"),
                             ("colour=red", "colour"), ("zone_id=nope", "zone_id"),
                             ("after=12", "after"), ("wait_for=-1", "wait_for")):
            status, err = await api.json("GET", f"/v1/hosts?{query}")
            assert status == 422, (query, err)
            assert err["error"]["code"] == "invalid" and err["error"]["field"] == field
        # well-formed, but past the log's head: a conflict with the log's state
        status, err = await api.json("GET", "/v1/hosts?wait_for=999999999")
        assert (status, err["error"]["field"]) == (409, "wait_for"), err
        status, err = await api.json("GET", "/v1/audit?after=99999999999999999999999")
        assert status == 422 and err["error"]["field"] == "after"

    run_api(scenario)


def test_unauthenticated_and_forbidden_calls_are_refused(run_api: Run,
                                                         api_env: Any) -> None:
    _ctx, _admin, keyring, ids = api_env
    integrator = keyring.create(actor="billing", role="integrator", allow=("operation.*",))

    async def scenario(api: Api) -> None:
        head = api.head()
        status, err = await api.json("GET", "/v1/vms", sign_it=False)
        assert status == 401 and err["error"]["code"] == "unauthenticated"
        r = await api.call("GET", "/v1/vms", headers={"Cloudkernel-Signature": "0" * 64})
        assert r.status == 401
        status, err = await api.json("GET", "/v1/vms", headers={"Authorization": "Bearer x"})
        assert status == 401
        body = json.dumps({"template_id": str(ids["template"]),
                           "image_store_id": str(ids["image_store"])}).encode()
        status, err = await api.json("POST", f"/v1/templates/{ids['template']}/download",
                                     json.dumps({"image_store_id": str(ids["image_store"])}
                                                ).encode(), key=integrator)
        assert status == 403 and err["error"]["code"] == "forbidden"
        status, err = await api.json("POST", "/v1/commands/template.download", body,
                                     sign_it=False)
        assert status == 401
        assert api.head() == head  # refused calls wrote nothing

    run_api(scenario)


def test_a_command_answers_202_with_its_operation_and_replays_by_key(run_api: Run) -> None:
    async def scenario(api: Api) -> None:
        ids = api.ids
        body = json.dumps({"image_store_id": str(ids["image_store"])}).encode()
        path = f"/v1/templates/{ids['template']}/download"
        r = await api.call("POST", path, body, idem="dl-1")
        doc = await r.json()
        assert r.status == 202, doc
        assert r.headers["Location"] == f"/v1/operations/{doc['operation_id']}"
        assert int(r.headers["Cloudkernel-Position"]) == doc["position"] > 0
        assert doc["replayed"] is False and doc["idempotency_key"] == "dl-1"
        head = api.head()
        again = await api.call("POST", path, body, idem="dl-1")
        assert again.status == 202 and (await again.json())["replayed"] is True
        assert api.head() == head
        other = json.dumps({"image_store_id": str(ids["zone"])}).encode()
        status, err = await api.json("POST", path, other, idem="dl-1")
        assert status == 409 and err["error"]["code"] == "idempotency_key_reused"
        assert api.head() == head
        # read your own write: the operations read model has it once it reached the position
        status, page = await api.json("GET", f"/v1/operations?wait_for={doc['position']}")
        assert status == 200 and doc["operation_id"] in [o["id"] for o in page["items"]]
        status, op = await api.json("GET", doc["operation_url"])
        assert status == 200 and op["kind"] and op["steps"]
        assert {"subsystem", "action", "status", "attempts"} <= set(op["steps"][0])
        status, cancelled = await api.json("POST", f"{doc['operation_url']}/cancel", b"{}")
        assert status in (200, 202), cancelled
        status, op = await api.json("GET", f"{doc['operation_url']}?wait_for="
                                            f"{cancelled['position']}")
        # no worker runs here: the step in flight must come back before it settles
        assert op["cancel_reason"], op

    run_api(scenario)


def test_a_missing_key_gets_a_fresh_one_and_generic_route_works(run_api: Run) -> None:
    async def scenario(api: Api) -> None:
        body = json.dumps({"zone_id": str(api.ids["zone"]), "name": "n1",
                           "cidr": "10.9.0.0/24"}).encode()
        r1 = await api.call("POST", "/v1/commands/network.create", body)
        r2 = await api.call("POST", "/v1/networks", body)
        assert r1.status == 202 and r2.status == 202, await r1.text()
        k1, k2 = r1.headers["Idempotency-Key"], r2.headers["Idempotency-Key"]
        assert k1 and k2 and k1 != k2
        doc = await r2.json()
        status, page = await api.json("GET", f"/v1/operations?wait_for={doc['position']}")
        assert status == 200 and doc["operation_id"] in [o["id"] for o in page["items"]]

    run_api(scenario)


def test_refusals_have_stable_codes_and_write_nothing(run_api: Run) -> None:
    async def scenario(api: Api) -> None:
        head = api.head()
        vm = "00000000-0000-0000-0000-000000000001"
        cases = [
            ("POST", "/v1/commands/vm.start", b"{not json", 400, "malformed", None),
            ("POST", "/v1/commands/vm.start", b'{"vm_id": 3}', 400, "malformed", "vm_id"),
            ("POST", "/v1/commands/vm.start", b'{"vm_id": "' + vm.encode() + b'", "x": 1}',
             400, "malformed", "x"),
            ("POST", "/v1/commands/nope.nope", b"{}", 404, "unknown_command", None),
            ("POST", f"/v1/vms/{vm}/start", b"{}", 404, "not_found", None),
            ("POST", f"/v1/vms/{vm}/start", b'{"vm_id": "' + str(api.ids["zone"]).encode()
             + b'"}', 400, "malformed", "vm_id"),
            ("POST", "/v1/vms", json.dumps({
                "name": "w", "account": "a", "zone_id": str(api.ids["zone"]),
                "service_offering_id": str(api.ids["offering"]),
                "template_id": str(api.ids["template"])}).encode(), 409, "invalid", None),
        ]
        for method, path, body, status, code, field in cases:
            got, err = await api.json(method, path, body)
            assert got == status, (path, body, err)
            if code:
                assert err["error"]["code"] == code, err
            if field:
                assert err["error"]["field"] == field, err
        r = await api.call("POST", "/v1/commands/vm.start", b"{}",
                           headers={"Content-Type": "text/plain"})
        assert r.status == 415
        r = await api.call("DELETE", "/v1/vms")
        assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
        r = await api.call("GET", "/v1/nowhere")
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        assert api.head() == head

    run_api(scenario)


def test_openapi_docs_health_and_metrics(run_api: Run) -> None:
    async def scenario(api: Api) -> None:
        r = await api.client.get("/v1/openapi.json")
        doc = await r.json()
        assert doc["openapi"].startswith("3.") and "/v1/vms" in doc["paths"]
        assert "/v1/commands/vm.deploy" in doc["paths"]
        assert "post" in doc["paths"]["/v1/vms/{id}/stop"]
        r = await api.client.get("/v1/docs")
        assert r.status == 200 and "openapi.json" in await r.text()
        r = await api.client.get("/healthz")
        health = await r.json()
        assert r.status == 200 and health["components"]["store"]["status"] == "up"
        await api.call("GET", "/v1/vms")
        r = await api.client.get("/metrics")
        text = await r.text()
        assert r.status == 200
        for name in ("cloudkernel_http_requests_total", "cloudkernel_projection_lag_positions",
                     "cloudkernel_command_queue_depth", "cloudkernel_step_duration_seconds",
                     "cloudkernel_log_head"):
            assert f"# TYPE {name}" in text, name

    run_api(scenario)


def test_healthz_is_503_when_the_store_is_unreachable(run_api: Run, api_env: Any,
                                                      monkeypatch: Any) -> None:
    ctx: ApiContext = api_env[0]

    def down() -> int:
        raise OSError("gone")

    async def scenario(api: Api) -> None:
        monkeypatch.setattr(ctx.app.recorder, "max_notification_id", down)
        r = await api.client.get("/healthz")
        assert r.status == 503 and (await r.json())["components"]["store"]["status"] == "down"

    run_api(scenario)


def test_refusals_name_their_field_and_never_echo_a_huge_value(
        run_api: Run, caplog: pytest.LogCaptureFixture) -> None:
    huge = "x" * 10_000

    async def scenario(api: Api) -> None:
        head = api.head()
        deploy = {"name": "web", "account": "a", "zone_id": str(api.ids["zone"]),
                  "service_offering_id": str(api.ids["offering"]),
                  "template_id": str(api.ids["template"])}
        volume = {"name": "data", "account": "a", "zone_id": str(api.ids["zone"])}
        cases = [
            ("unknown template", "/v1/vms", {**deploy, "template_id": str(uuid4())},
             409, "template_id"),
            ("bad name", "/v1/volumes", {**volume, "name": " data", "size_bytes": 1 << 30},
             409, "name"),
            ("huge name", "/v1/commands/service.register", {"name": huge, "version": "1"},
             409, "name"),
            ("negative size", "/v1/volumes", {**volume, "size_bytes": -1}, 409, "size_bytes"),
            ("no size", "/v1/volumes", volume, 409, "size_bytes"),
            ("huge unknown field", "/v1/vms", {**deploy, huge: 1}, 400, huge[:100]),
            ("huge command", "/v1/commands/vm.deploy", {**deploy, "command": huge}, 400,
             "command"),
            ("nested type", "/v1/commands/operation.start",
             {"kind": "k", "plan": {"steps": [{"step_id": str(uuid4()), "subsystem": "echo",
                                               "action": "echo", "args": {},
                                               "depends_on": [5]}]}},
             400, "plan.steps[0].depends_on[0]"),
        ]
        for name, path, body, status, field in cases:
            caplog.clear()
            with caplog.at_level(logging.INFO):
                got, err = await api.json("POST", path, json.dumps(body).encode())
            assert (got, err["error"].get("field")) == (status, field), (name, err)
            assert len(err["error"]["message"]) < 1000, name
            assert "x" * 100 not in err["error"]["message"], name
            logged = " ".join(r.getMessage() for r in caplog.records)
            assert "x" * 100 not in logged, (name, logged[:300])
        # a read model's query parameter, and a position the log has not reached
        got, err = await api.json("GET", "/v1/vms?wait_for=999999")
        assert (got, err["error"]["field"]) == (409, "wait_for"), err
        got, err = await api.json("GET", "/v1/vms?limit=" + huge[:5000])
        assert (got, err["error"]["field"]) == (422, "limit"), err
        assert "x" * 100 not in err["error"]["message"], err
        assert api.head() == head

    run_api(scenario)


def test_an_empty_idempotency_key_is_refused_as_the_document_says(run_api: Run) -> None:
    async def scenario(api: Api) -> None:
        head = api.head()
        r = await api.call("POST", "/v1/commands/vm.start",
                           json.dumps({"vm_id": str(uuid4())}).encode(), idem="")
        err = await r.json()
        assert r.status == 400, err
        assert (err["error"]["code"], err["error"]["field"]) == ("malformed", "Idempotency-Key")
        assert api.head() == head

    run_api(scenario)


def test_a_header_holding_a_control_character_is_a_400_and_one_warning_line(
        run_api: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(api: Api) -> None:
        server = api.client.server
        for header in (b"Idempotency-Key: a\x00b", b"Cloudkernel-Key-Id: k\x01",
                       b"X-Anything: \x7f"):
            caplog.clear()
            with caplog.at_level(logging.INFO):
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(b"POST /v1/commands/vm.start HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 2\r\n" + header
                             + b"\r\nConnection: close\r\n\r\n{}")
                await writer.drain()
                answer = await reader.read()
                writer.close()
                await asyncio.sleep(0.05)
            assert answer.split(b"\r\n", 1)[0].endswith(b"400 Bad Request"), answer
            assert b"Invalid header value char" in answer
            logged = [r for r in caplog.records if r.name == "aiohttp.server"]
            assert [r.levelno for r in logged] == [logging.WARNING], logged
            assert not logged[0].exc_info
            assert "\x00" not in logged[0].getMessage()
            assert "malformed HTTP request" in logged[0].getMessage()

    run_api(scenario)


def test_a_store_that_cannot_serve_is_503_with_retry_after_and_the_key_to_retry_with(
        run_api: Run, api_env: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import psycopg
    from eventsourcing.persistence import OperationalError

    ctx: ApiContext = api_env[0]
    type_, _run = ctx.catalog["vm.start"]

    def down(*args: Any, **kwargs: Any) -> Any:
        try:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        except psycopg.OperationalError as e:
            raise OperationalError(str(e)) from e

    monkeypatch.setitem(ctx.catalog, "vm.start", (type_, down))  # type: ignore[index]

    async def scenario(api: Api) -> None:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            r = await api.call("POST", "/v1/commands/vm.start",
                               json.dumps({"vm_id": str(uuid4())}).encode())
            err = await r.json()
        assert r.status == 503 and r.headers["Retry-After"] == "5", err
        key = r.headers["Idempotency-Key"]  # the fresh key it ran under: retry with it
        assert err["error"]["code"] == "unavailable" and f"({key})" in err["error"]["message"]
        assert "server closed" not in err["error"]["message"]
        ours = [rec for rec in caplog.records if rec.name.startswith("gateways")]
        assert [rec.levelno for rec in ours] == [logging.WARNING] and not ours[0].exc_info

    run_api(scenario)

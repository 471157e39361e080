"""Commands over NATS on real PostgreSQL and a real nats-server: signed, run once, refused cleanly.

Each test runs a `CommandIntake` (with the catalog `cloudkernel up` uses) in its own asyncio
loop and talks to it as an integrator would: core NATS requests to
`cloudkernel.commands.<tag>`. Every refusal is checked to leave the event log's head where it
was, and the intake to keep serving after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from fixtures import PostgresServer
from nats.aio.client import Client

from gateways.access import ApiKey, Keyring, KeyringAccess
from gateways.stream.intake import COMMANDS_PREFIX, ERROR_HEADER, CommandIntake
from kernel.bootstrap import (
    SAMPLE_INVENTORY,
    Platform,
    command_catalog,
    open_engine,
    open_platform,
)
from kernel.bootstrap.migrations import migrate_all
from kernel.commands import Command, CommandOutcome
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.contracts.events import ACTOR, CORRELATION_ID
from kernel.event_feed import EventFeed
from kernel.inventory.spec import parse_inventory
from kernel.operation_commands import CancelOperation
from kernel.operations import OperationEngine
from kernel.settings import Settings
from services.acl.model.rules import ROLE_ROOT_ADMIN
from services.acl.service import AclService

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "integrator" / "send_command.py"
Scenario = Callable[[Client, CommandIntake], Awaitable[None]]
Reply = Awaitable[tuple[dict[str, Any], dict[str, str]]]


@pytest.fixture
def kernel(pg_dsn: str, tmp_path: Path) -> Iterator[tuple[Platform, OperationEngine]]:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2,
                        data_dir=tmp_path)
    migrate_all(settings)
    platform, engine, _feed = open_engine(settings)
    yield platform, engine
    platform.close()


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring(tmp_path / "keys.json")


def serve(kernel: tuple[Platform, OperationEngine], keyring: Keyring, url: str,
          scenario: Scenario, wrap: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Run the intake and the scenario in one loop; stop the intake cleanly afterwards."""
    platform, engine = kernel

    async def main() -> None:
        catalog = dict(command_catalog(platform, engine))
        if wrap is not None:
            wrap(catalog)
        intake = CommandIntake(catalog, KeyringAccess(keyring), [url])
        stop = asyncio.Event()
        task = asyncio.create_task(intake.run(stop))
        await asyncio.wait_for(intake.ready.wait(), 10)
        nc = await nats.connect(url)
        try:
            await scenario(nc, intake)
        finally:
            await nc.close()
            stop.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(main())


async def send(nc: Client, tag: str, body: Any, key: ApiKey | None, *,
               idem: str | None = "new", ts: float | None = None,
               secret: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """A request as an integrator sends it; returns the decoded reply and its headers."""
    subject = COMMANDS_PREFIX + tag
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    idem = uuid.uuid4().hex if idem == "new" else idem
    headers: dict[str, str] = {}
    if idem is not None:
        headers[IDEMPOTENCY_KEY_HEADER] = idem
    if key is not None:
        timestamp = str(int(time.time() if ts is None else ts))
        headers[KEY_ID_HEADER] = key.id
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(secret or key.secret, timestamp=timestamp,
                                         subject=subject, idempotency_key=idem or "", body=data)
    msg = await nc.request(subject, data, timeout=20, headers=headers or None)
    return json.loads(msg.data), dict(msg.headers or {})


def head(platform: Platform) -> int:
    return platform.app.recorder.max_notification_id() or 0


def start_body(kind: str = "test.echo") -> dict[str, Any]:
    step = {"step_id": str(uuid.uuid4()), "subsystem": "echo", "action": "echo",
            "args": {"message": "hi"}}
    return {"kind": kind, "plan": {"steps": [step]}}


def test_signed_commands_run_once_and_their_events_carry_the_reply(
        kernel: tuple[Platform, OperationEngine], keyring: Keyring, nats_url: str) -> None:
    platform, _ = kernel
    admin = keyring.create(actor="ops-admin", role="admin")
    billing = keyring.create(actor="billing", role="integrator", allow=["operation.*"])
    other_admin = keyring.create(actor="other-admin", role="admin")
    inventory, _located = parse_inventory(SAMPLE_INVENTORY)
    load = {"command": "inventory.load", "source": "nats",
            "inventory": msgspec.to_builtins(inventory)}
    feed = EventFeed(platform.app)

    def events_of(correlation_id: str) -> list[tuple[int, str]]:
        return [(e.position, e.headers[ACTOR]) for e in feed.read(0, 10_000)
                if e.headers.get(CORRELATION_ID) == correlation_id]

    async def scenario(nc: Client, intake: CommandIntake) -> None:
        reply, headers = await send(nc, "inventory.load", load, admin, idem="load-1")
        assert reply["ok"] is True, reply
        assert (reply["command"], reply["idempotency_key"], reply["replayed"]) == \
            ("inventory.load", "load-1", False)
        assert len(reply["result"]["registered"]["hosts"]) == 8
        assert headers[CORRELATION_ID] == reply["correlation_id"]
        assert reply["positions"] and reply["positions"][-1] == head(platform)
        events = events_of(reply["correlation_id"])
        assert [p for p, _ in events] == reply["positions"]
        assert {actor for _, actor in events} == {"ops-admin"}

        # The same key again: the first result, nothing written.
        before = head(platform)
        again, _ = await send(nc, "inventory.load", load, admin, idem="load-1")
        assert again["ok"] and again["replayed"] is True and again["positions"] == []
        assert again["result"] == reply["result"]
        assert again["correlation_id"] == reply["correlation_id"]
        assert head(platform) == before

        # Keys are scoped by actor: another principal's "load-1" is its own command.
        other, _ = await send(nc, "inventory.load", load, other_admin, idem="load-1")
        assert other["ok"] and other["replayed"] is False
        assert other["correlation_id"] != reply["correlation_id"]

        started, _ = await send(nc, "operation.start", start_body(), billing)
        assert started["ok"], started
        operation_id = started["result"]["operation_id"]
        assert started["result"]["state"] == "Running"
        assert {a for _, a in events_of(started["correlation_id"])} == {"billing"}

        cancelled, _ = await send(nc, "operation.cancel", {"operation_id": operation_id},
                                  billing)
        assert cancelled["ok"], cancelled
        assert cancelled["result"]["operation_id"] == operation_id
        assert len(events_of(cancelled["correlation_id"])) == len(cancelled["positions"]) > 0
        assert intake.stats["ok"] == 5

    serve(kernel, keyring, nats_url, scenario)


def test_bad_commands_each_get_their_error_reply_and_write_nothing(
        kernel: tuple[Platform, OperationEngine], keyring: Keyring, nats_url: str) -> None:
    platform, _ = kernel
    admin = keyring.create(actor="ops-admin", role="admin")
    canceller = keyring.create(actor="canceller", role="integrator",
                               allow=["operation.cancel"])
    revoked = keyring.create(actor="gone", role="admin")
    keyring.revoke(revoked.id)
    expired = keyring.create(actor="old", role="admin", expires_in_days=1,
                             now=datetime.now(UTC) - timedelta(days=2))
    unknown = ApiKey(id="ck_0123456789abcdef", secret="0" * 64, actor="x", role="admin",
                     created=datetime.now(UTC))
    live = keyring.create(actor="live", role="admin")

    def explode_on_request(catalog: dict[str, Any]) -> None:
        # A fault inside the core (not a refusal) must become an `internal` reply.
        type_, run = catalog["operation.cancel"]

        def run_or_fail(command: Command, **kw: Any) -> CommandOutcome:
            if isinstance(command, CancelOperation) and command.reason == "explode":
                raise RuntimeError("disk on fire at /secret/path")
            return run(command, **kw)  # type: ignore[no-any-return]

        catalog["operation.cancel"] = (type_, run_or_fail)

    async def scenario(nc: Client, intake: CommandIntake) -> None:
        # The second operation waits for the first's entity; cancelled, it is finished.
        entity = str(uuid.uuid4())
        first, _ = await send(nc, "operation.start", {**start_body(), "entity_ids": [entity]},
                              admin, idem="start-1")
        waiting, _ = await send(nc, "operation.start",
                                {**start_body(), "entity_ids": [entity]}, admin)
        assert first["ok"] and waiting["result"]["state"] == "Waiting", waiting
        op_id = waiting["result"]["operation_id"]
        done, _ = await send(nc, "operation.cancel", {"operation_id": op_id}, admin)
        assert done["ok"] and done["result"]["state"] == "Cancelled", done
        missing = str(uuid.uuid4())
        cancel = {"operation_id": missing}

        def later(*args: Any, **kwargs: Any) -> Callable[[], Reply]:
            return partial(send, nc, *args, **kwargs)

        cases: list[tuple[str, Callable[[], Reply], str, str]] = [
            ("undecodable", later("operation.cancel", b"{not json", admin),
             "malformed", "body is not JSON"),
            ("not an object", later("operation.cancel", b"[1, 2]", admin),
             "malformed", "body must be a JSON object"),
            ("unknown command", later("vm.explode", {}, admin),
             "unknown_command", "unknown command 'vm.explode'"),
            ("no idempotency key", later("operation.cancel", cancel, admin, idem=None),
             "malformed", "header Idempotency-Key is required"),
            ("unsigned", later("operation.cancel", cancel, None),
             "unauthenticated", "header Cloudkernel-Key-Id is required"),
            ("bad signature", later("operation.cancel", cancel, admin, secret="f" * 64),
             "unauthenticated", "Cloudkernel-Signature does not match"),
            ("stale", later("operation.cancel", cancel, admin, ts=time.time() - 301),
             "unauthenticated", "behind the server clock"),
            ("unknown key", later("operation.cancel", cancel, unknown),
             "unauthenticated", "unknown key id"),
            ("revoked key", later("operation.cancel", cancel, revoked),
             "unauthenticated", "was revoked"),
            ("expired key", later("operation.cancel", cancel, expired),
             "unauthenticated", "expired at"),
            ("not allowed", later("operation.start", start_body(), canceller),
             "forbidden", "may not send operation.start; it allows operation.cancel"),
            ("wrong field type", later("operation.cancel", {"operation_id": 5}, admin),
             "malformed", "Expected `uuid`, got `int` - at `$.operation_id`"),
            ("missing field", later("operation.cancel", {"reason": "x"}, admin),
             "malformed", "missing required field `operation_id`"),
            ("unknown field", later("operation.cancel", {**cancel, "operation": 1}, admin),
             "malformed", "unknown field 'operation'"),
            ("tag mismatch", later("operation.cancel",
                                   {**cancel, "command": "operation.start"}, admin),
             "malformed", "body field command is 'operation.start'"),
            ("invalid plan", later("operation.start", {"kind": "x", "plan": {"steps": []}},
                                   admin), "invalid", "plan: steps must not be empty"),
            ("refused transition", later("operation.cancel", {"operation_id": op_id}, admin),
             "invalid", "cannot cancel"),
            ("unknown operation", later("operation.cancel", cancel, admin),
             "not_found", missing),
            ("key reused", later("operation.start", start_body(), admin, idem="start-1"),
             "idempotency_key_reused", "'ops-admin/start-1' was already used"),
            ("fault", later("operation.cancel", {**cancel, "reason": "explode"}, admin),
             "internal", "internal error (reference"),
        ]
        for name, request, code, message in cases:
            before = head(platform)
            reply, headers = await request()
            assert reply["ok"] is False, (name, reply)
            assert reply["error"]["code"] == code, (name, reply)
            assert message in reply["error"]["message"], (name, reply)
            assert headers[ERROR_HEADER] == code, name
            assert head(platform) == before, f"{name} wrote to the log"
        assert "disk on fire" not in json.dumps(reply)  # the fault's internals stay in the log
        transition, _ = await send(nc, "operation.cancel", {"operation_id": op_id}, admin)
        assert transition["error"]["reason"] == "invalid_transition"
        assert transition["error"]["detail"]["state"] == "Cancelled"

        # A request nobody can be answered is dropped, not run.
        before = head(platform)
        body = json.dumps(start_body()).encode()
        ts = str(int(time.time()))
        subject = COMMANDS_PREFIX + "operation.start"
        await nc.publish(subject, body, headers={
            IDEMPOTENCY_KEY_HEADER: "no-reply", KEY_ID_HEADER: admin.id, TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(admin.secret, timestamp=ts, subject=subject,
                                   idempotency_key="no-reply", body=body)})
        await nc.flush()
        for _ in range(100):
            if intake.stats["dropped"]:
                break
            await asyncio.sleep(0.05)
        assert intake.stats["dropped"] == 1 and head(platform) == before

        # A key revoked while the intake runs is refused from the next request on.
        assert (await send(nc, "operation.cancel", cancel, live))[0]["error"]["code"] == \
            "not_found"
        keyring.revoke(live.id)
        reply, _ = await send(nc, "operation.cancel", cancel, live)
        assert reply["error"]["code"] == "unauthenticated"

        # And after all of it the intake still serves.
        ok, _ = await send(nc, "operation.start", start_body(), admin)
        assert ok["ok"] is True, ok
        assert intake.stats["internal"] == 1 and intake.stats["malformed"] == 7

    serve(kernel, keyring, nats_url, scenario, wrap=explode_on_request)


def test_the_example_integrator_script(kernel: tuple[Platform, OperationEngine],
                                       keyring: Keyring, nats_url: str) -> None:
    platform, _ = kernel
    key = keyring.create(actor="example", role="integrator", allow=["operation.*"])

    async def script(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE), *argv, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def scenario(nc: Client, intake: CommandIntake) -> None:
        code, out, err = await script(
            "operation.start", json.dumps(start_body("example")), "--url", nats_url,
            "--key-id", key.id, "--secret", key.secret, "--idempotency-key", "example-1")
        assert code == 0, (out, err)
        reply = json.loads(out)
        assert reply["ok"] and reply["result"]["state"] == "Running"
        actors = {e.headers[ACTOR] for e in EventFeed(platform.app).read(0, 1000)
                  if e.headers.get(CORRELATION_ID) == reply["correlation_id"]}
        assert actors == {"example"}

        missing = str(uuid.uuid4())
        code, out, err = await script(
            "operation.cancel", json.dumps({"operation_id": missing}),
            env={**os.environ, "CK_NATS_URL": nats_url, "CK_KEY_ID": key.id,
                 "CK_KEY_SECRET": key.secret})
        assert code == 1, (out, err)
        assert json.loads(out)["error"]["code"] == "not_found"

        code, out, err = await script("operation.cancel", "{}", "--url", nats_url,
                                      "--key-id", key.id, "--secret", "wrong")
        assert code == 1 and json.loads(out)["error"]["code"] == "unauthenticated"

    serve(kernel, keyring, nats_url, scenario)


def test_the_intake_process_serves_until_sigterm(pg_dsn: str, tmp_path: Path,
                                                 nats_url: str) -> None:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2,
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    key = Keyring(tmp_path / "data" / "keys.json").create(actor="ci", role="admin")
    env = {**os.environ, "CLOUDKERNEL_STORE": "postgres", "CLOUDKERNEL_POSTGRES_DSN": pg_dsn,
           "CLOUDKERNEL_NATS_URLS": nats_url, "CLOUDKERNEL_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(EXAMPLE.parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "gateways.cli.main", "intake"],
                            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "intake serving" in line:
                break
        assert "with 1 active keys" in "".join(seen), "".join(seen)

        # The ACL's users count in the intake process too, as in `up` (made after it started:
        # the ACL's log is followed at each decision)
        acl = AclService.open(settings)
        try:
            acl.create_account("ops", domain="ROOT")
            acl.create_user("olga", account="ops", role=ROLE_ROOT_ADMIN, password="olga-pass!")
            token = acl.login("olga", "olga-pass!")
        finally:
            acl.close()

        async def client() -> tuple[dict[str, Any], dict[str, Any]]:
            nc = await nats.connect(nats_url)
            try:
                signed = (await send(nc, "operation.start", start_body(), key))[0]
                msg = await nc.request(
                    COMMANDS_PREFIX + "operation.start", json.dumps(start_body()).encode(),
                    timeout=20, headers={IDEMPOTENCY_KEY_HEADER: uuid.uuid4().hex,
                                         "Authorization": f"Bearer {token}"})
                return signed, json.loads(msg.data)
            finally:
                await nc.close()

        reply, as_olga = asyncio.run(client())
        assert reply["ok"] and reply["result"]["state"] == "Running", reply
        assert as_olga["ok"] and as_olga["result"]["state"] == "Running", as_olga
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "intake: stopped" in out and "'ok': 2" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    platform = open_platform(settings)
    try:
        actors = {e.headers[ACTOR] for e in EventFeed(platform.app).read(0, 1000)
                  if e.headers.get(CORRELATION_ID) == reply["correlation_id"]}
    finally:
        platform.close()
    assert actors == {"ci"}
    assert as_olga["correlation_id"] != reply["correlation_id"]


def test_error_replies_name_the_field_and_clip_what_they_echo(
        kernel: tuple[Platform, OperationEngine], keyring: Keyring, nats_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    platform, _ = kernel
    admin = keyring.create(actor="ops-admin", role="admin")
    huge = "x" * 10_000

    async def scenario(nc: Client, intake: CommandIntake) -> None:
        cancel = {"operation_id": str(uuid.uuid4())}
        cases: list[tuple[str, str, Any, dict[str, Any], str, str | None]] = [
            ("no idempotency key", "operation.cancel", cancel, {"idem": None}, "malformed",
             "Idempotency-Key"),
            ("wrong field type", "operation.cancel", {"operation_id": 5}, {}, "malformed",
             "operation_id"),
            ("missing field", "operation.cancel", {"reason": "x"}, {}, "malformed",
             "operation_id"),
            ("nested field", "operation.start",
             {"kind": "x", "plan": {"steps": [{**start_body()["plan"]["steps"][0],
                                               "depends_on": [7]}]}}, {}, "malformed",
             "plan.steps[0].depends_on[0]"),
            ("unknown field", "operation.cancel", {**cancel, huge: 1}, {}, "malformed",
             huge[:100]),
            ("tag mismatch", "operation.cancel", {**cancel, "command": huge}, {}, "malformed",
             "command"),
            ("a rule of the kernel", "operation.start", {"kind": "x", "plan": {"steps": []}},
             {}, "invalid", "plan"),
            ("a bad name, echoed", "service.register", {"name": huge, "version": "1"}, {},
             "invalid", "name"),
        ]
        for name, tag, body, kw, code, field in cases:
            before = head(platform)
            caplog.clear()
            with caplog.at_level(logging.INFO):
                reply, _ = await send(nc, tag, body, admin, **kw)
            error = reply["error"]
            assert (error["code"], error.get("field")) == (code, field), (name, reply)
            assert len(error["message"]) < 1000 and huge not in error["message"], name
            if field is not None and error.get("detail"):
                assert error["detail"].get("field", field) == field, (name, reply)
            logged = " ".join(r.getMessage() for r in caplog.records)
            assert "x" * 100 not in logged, (name, logged[:300])
            assert head(platform) == before, f"{name} wrote to the log"

        # A header holding a control character (NUL...) is refused naming it, in one line.
        for header in (IDEMPOTENCY_KEY_HEADER, KEY_ID_HEADER, "X-Anything"):
            caplog.clear()
            with caplog.at_level(logging.INFO):
                msg = await nc.request(COMMANDS_PREFIX + "operation.cancel",
                                       json.dumps(cancel).encode(), timeout=10,
                                       headers={IDEMPOTENCY_KEY_HEADER: "k", header: "a\x00b"})
            reply = json.loads(msg.data)
            assert reply["error"]["code"] == "malformed", reply
            assert reply["error"]["field"] == header, reply
            assert "control characters" in reply["error"]["message"]
            records = [r for r in caplog.records if r.name.startswith("gateways")]
            assert len(records) == 1 and records[0].levelno <= logging.WARNING, records
            assert not records[0].exc_info and "\x00" not in records[0].getMessage()

    serve(kernel, keyring, nats_url, scenario)


def test_a_postgresql_outage_is_an_unavailable_reply_and_a_retry_applies_once(
        tmp_path: Path, controllable_postgres: PostgresServer, pg_dsn: str, keyring: Keyring,
        nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL stopped under the intake: a command gets `unavailable` with a retry hint
    (and header Retry-After), logged in one line without a traceback; once it is back, the
    same request (same Idempotency-Key) is applied once."""
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2,
                        postgres_connect_timeout=1, data_dir=tmp_path)
    migrate_all(settings)
    platform, engine, _feed = open_engine(settings)
    admin = keyring.create(actor="ops-admin", role="admin")
    body = start_body()

    async def scenario(nc: Client, intake: CommandIntake) -> None:
        await asyncio.to_thread(controllable_postgres.stop)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            reply, headers = await send(nc, "operation.start", body, admin, idem="outage-1")
        assert reply["ok"] is False and reply["error"]["code"] == "unavailable", reply
        assert reply["error"]["retry_after"] == 5 and headers["Retry-After"] == "5"
        assert headers[ERROR_HEADER] == "unavailable"
        assert "same idempotency key (outage-1)" in reply["error"]["message"]
        ours = [r for r in caplog.records if r.name.startswith("gateways")]
        assert [r.levelno for r in ours] == [logging.WARNING], ours
        assert not any(r.exc_info for r in ours)

        await asyncio.to_thread(controllable_postgres.start)
        deadline = time.monotonic() + 90
        while True:  # the pool reconnects on its own, after a backoff
            reply, headers = await send(nc, "operation.start", body, admin, idem="outage-1")
            if reply["ok"] or time.monotonic() > deadline:
                break
            assert reply["error"]["code"] == "unavailable", reply
            await asyncio.sleep(1)
        assert reply["ok"] is True and reply["replayed"] is False, reply
        again, _ = await send(nc, "operation.start", body, admin, idem="outage-1")
        assert again["ok"] is True and again["replayed"] is True, again
        assert again["result"] == reply["result"]
        accepted = [n for n in platform.app.recorder.select_notifications(
            start=None, limit=1000) if n.topic == "operation.Accepted"]
        assert len(accepted) == 1

    try:
        serve((platform, engine), keyring, nats_url, scenario)
    finally:
        platform.close()

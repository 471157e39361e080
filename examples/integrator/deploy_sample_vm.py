#!/usr/bin/env python3
"""Deploy a VM on the sample inventory: download its template if needed, then vm.deploy.

Uses only nats-py and the standard library, as any integrator could: the ids it needs (zone,
image store, template, service offering) are looked up by name in the event stream `EVENTS`,
and the commands are signed as `send_command.py` signs them. With `cloudkernel up` running
(`make run`), and the admin key it printed on its first start:

    export CK_KEY_ID=ck_... CK_KEY_SECRET=...
    python examples/integrator/deploy_sample_vm.py --name web-1

It prints the ids it found, then every event of each operation it starts (those whose
`Cloudkernel-Correlation-Id` is the operation's id) until the operation ends. Exit status: 0
when the VM was deployed and started, 1 when a command was refused or an operation did not
succeed, 2 on bad arguments, a missing name or when NATS did not answer in time.
"""

import argparse
import asyncio
import json
import os
import sys
import uuid

import nats
import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy
from send_command import send

STREAM = "EVENTS"
PREFIX = "cloudkernel.events."
ENDED = {"operation.Succeeded", "operation.Failed", "operation.RolledBack",
         "operation.Cancelled"}


class Failed(Exception):
    """A command was refused or an operation did not succeed (exit 1)."""


class Missing(Exception):
    """Something the script needs is not there (exit 2)."""


async def read(js, subject: str, start: int, timeout: float, done) -> object:
    """Feed the events on `subject` from stream sequence `start` to `done(topic, headers,
    payload)` until it returns something other than None; TimeoutError after `timeout`."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    sub = await js.subscribe(subject, stream=STREAM, ordered_consumer=True, config=config)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            msg = await sub.next_msg(timeout=max(0.001, deadline - loop.time()))
            headers = msg.headers or {}
            found = done(headers.get("Cloudkernel-Topic", ""), headers, json.loads(msg.data))
            if found is not None:
                return found
    except nats.errors.TimeoutError:
        raise TimeoutError(f"nothing conclusive on {subject} within {timeout:g} s") from None
    finally:
        await sub.unsubscribe()


async def catch_up(js, topic: str) -> list[tuple[str, dict, dict]]:
    """Every event of `topic` (wildcards allowed) in the stream now, in log order."""
    subject = PREFIX + topic
    info = await js.stream_info(STREAM, subjects_filter=subject)
    wanted = sum((info.state.subjects or {}).values())
    seen: list[tuple[str, dict, dict]] = []

    def collect(topic: str, headers: dict, payload: dict) -> object:
        seen.append((topic, headers, payload))
        return True if len(seen) >= wanted else None

    if wanted:
        await read(js, subject, 1, 30, collect)
    return seen


async def named(js, topic: str, name: str, what: str) -> str:
    """The id of the entity created by `topic` under this name."""
    for _, headers, payload in await catch_up(js, topic):
        if payload.get("name") == name:
            return headers["Cloudkernel-Originator-Id"]
    raise Missing(f"no {what} named {name!r} in the event stream (is the sample inventory "
                  "loaded, and has the relay caught up?)")


async def template_state(js, template_id: str) -> str:
    """The template's state, folded from its events."""
    state = "unknown"
    states = {"template.Registered": "Registered", "template.DownloadStarted": "Downloading",
              "template.Downloaded": "Ready", "template.DownloadFailed": "Error",
              "template.Removed": "Removed"}
    for topic, headers, _ in await catch_up(js, "template.>"):
        if headers.get("Cloudkernel-Originator-Id") == template_id:
            state = states.get(topic, state)
    return state


async def run_operation(js, args: argparse.Namespace, command: str, body: dict,
                        entity: str, outcomes: set[str]) -> tuple[dict, str]:
    """Send the command and print the events of the operation it starts (those correlated
    with it) until it ended and its entity (`result[entity]`) got one of `outcomes` (which
    the kernel records with the operation's end); the result and that outcome. Failed
    unless the operation succeeded."""
    start = (await js.stream_info(STREAM)).state.last_seq + 1  # its events come after
    reply = await send(args.url, args.key_id, args.secret, command,
                       json.dumps(body).encode(), f"{command}-{uuid.uuid4()}", args.timeout)
    if not reply.get("ok"):
        raise Failed(f"{command} refused: {json.dumps(reply.get('error'))}")
    result = reply["result"]
    operation_id, entity_id = result["operation_id"], result[entity]
    print(f"{command}: operation {operation_id}", flush=True)
    ended: list[tuple[str, dict]] = []
    outcome: list[str] = []

    def follow(topic: str, headers: dict, payload: dict) -> object:
        if headers.get("Cloudkernel-Correlation-Id") != operation_id:
            return None
        originator = headers.get("Cloudkernel-Originator-Id", "")
        print(f"  {headers.get('Cloudkernel-Position')} {topic} {originator}", flush=True)
        if topic in ENDED and originator == operation_id:
            ended.append((topic, payload))
        if topic in outcomes and originator == entity_id:
            outcome.append(topic)
        if ended and (outcome or ended[0][0] != "operation.Succeeded"):
            return True
        return None

    await read(js, PREFIX + ">", start, args.wait, follow)
    topic, payload = ended[0]
    if topic != "operation.Succeeded":
        detail = f": {payload.get('error_code')}: {payload.get('message')}" \
            if topic == "operation.Failed" else ""
        raise Failed(f"{command} ended {topic.split('.')[1]}{detail}")
    return result, outcome[0]


async def deploy(args: argparse.Namespace) -> None:
    """Find the ids, download the template if needed, deploy, and check the VM started."""
    nc = await nats.connect(args.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        zone_id = await named(js, "zone.Created", args.zone, "zone")
        store_id = await named(js, "image_store.Added", args.image_store, "image store")
        template_id = await named(js, "template.Registered", args.template, "template")
        offering_id = await named(js, "service_offering.Created", args.offering,
                                  "service offering")
        state = await template_state(js, template_id)
        for what, name, found in (("zone", args.zone, zone_id),
                                  ("image store", args.image_store, store_id),
                                  ("template", args.template, f"{template_id} ({state})"),
                                  ("service offering", args.offering, offering_id)):
            print(f"{what} {name}: {found}", flush=True)
        if state != "Ready":
            _, outcome = await run_operation(
                js, args, "template.download",
                {"template_id": template_id, "image_store_id": store_id}, "template_id",
                {"template.Downloaded", "template.DownloadFailed"})
            if outcome != "template.Downloaded":
                raise Failed(f"template {args.template}: {outcome}")
        result, outcome = await run_operation(
            js, args, "vm.deploy",
            {"name": args.name, "account": args.account, "zone_id": zone_id,
             "service_offering_id": offering_id, "template_id": template_id}, "vm_id",
            {"vm.Started", "vm.StartFailed", "vm.Failed"})
        if outcome != "vm.Started":
            raise Failed(f"vm {args.name} ({result['vm_id']}): {outcome}")
        print(f"vm {args.name} ({result['vm_id']}) is Running", flush=True)
    finally:
        await nc.close()


def main() -> int:
    """Parse the arguments and deploy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CK_NATS_URL", "nats://127.0.0.1:4322"),
                        help="NATS server (env CK_NATS_URL)")
    parser.add_argument("--key-id", default=os.environ.get("CK_KEY_ID"),
                        help="key id `cloudkernel up` printed (env CK_KEY_ID)")
    parser.add_argument("--secret", default=os.environ.get("CK_KEY_SECRET"),
                        help="the key's secret (env CK_KEY_SECRET)")
    parser.add_argument("--name", default="web-1", help="the VM's name")
    parser.add_argument("--account", default="demo", help="the account that owns the VM")
    parser.add_argument("--zone", default="zone-1")
    parser.add_argument("--image-store", default="secondary-1")
    parser.add_argument("--template", default="empty-qcow2")
    parser.add_argument("--offering", default="small", help="service offering")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for a command's reply")
    parser.add_argument("--wait", type=float, default=120.0,
                        help="seconds to wait for an operation to end")
    args = parser.parse_args()
    if not args.key_id or not args.secret:
        parser.error("give --key-id and --secret (or CK_KEY_ID and CK_KEY_SECRET)")
    try:
        asyncio.run(deploy(args))
    except Failed as e:
        print(f"deploy_sample_vm: {e}", file=sys.stderr)
        return 1
    except (Missing, TimeoutError, nats.errors.Error, OSError) as e:
        print(f"deploy_sample_vm: {e}; is `cloudkernel up` running at {args.url}?",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

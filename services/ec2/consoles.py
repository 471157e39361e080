"""GetConsoleOutput and GetConsoleScreenshot: the instance's serial output and screen, read
through the console proxy with a single-use link minted for the caller (`vm.console`), so the
ACL decides as for any console and the platform's log records the minting and redemption."""

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp

from services.ec2.context import Refused, Request, parse_ids, refused
from services.ec2.ids import INSTANCE, not_found
from services.ec2.protocol import Ec2Error

FETCH_SECONDS = 30.0


async def get_console_output(req: Request) -> dict[str, Any]:
    """GetConsoleOutput: the most recent serial console output (up to 64 KB), base64."""
    ec2_id, data = await _read(req, "output")
    answer: dict[str, Any] = {"instanceId": ec2_id,
                              "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    if data:
        answer["output"] = base64.b64encode(data).decode("ascii")
    return answer


async def get_console_screenshot(req: Request) -> dict[str, Any]:
    """GetConsoleScreenshot: a PNG of the instance's screen, base64."""
    ec2_id, data = await _read(req, "screenshot")
    return {"instanceId": ec2_id, "imageData": base64.b64encode(data).decode("ascii")}


async def _read(req: Request, kind: str) -> tuple[str, bytes]:
    ec2_id = req.params.get("InstanceId")
    if not ec2_id:
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    [vm_id] = parse_ids(INSTANCE, [ec2_id])
    vm = req.platform.view.vm(vm_id, req.account)
    if vm is None:
        raise not_found(INSTANCE, ec2_id)
    await req.check_dry_run(("vm.console", vm.account))
    if vm.state != "Running":
        raise Ec2Error("IncorrectInstanceState", f"The instance '{ec2_id}' is not in a state "
                       f"from which its console can be read ({vm.state.lower()}).")
    try:
        # a fresh link each time: it is spent by the read below
        outcome = await req.platform.command(
            req.caller, "vm.console", {"vm_id": str(vm_id), "kind": kind},
            idempotency_key=req.key("console", kind, uuid.uuid4().hex))
    except Refused as e:
        raise refused(e, invalid="IncorrectInstanceState",
                      not_found=not_found(INSTANCE, ec2_id)) from None
    url = str(outcome.result["url"])
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(FETCH_SECONDS)) as http, \
                http.get(url) as response:
            body = await response.read()
            if response.status != 200:
                try:
                    message = str((await response.json())["error"])
                except Exception:
                    message = body[:200].decode("utf-8", "replace")
                raise Ec2Error("Unavailable" if response.status >= 500 else
                               "IncorrectInstanceState",
                               f"the console of '{ec2_id}' could not be read: {message}",
                               503 if response.status >= 500 else 400)
            return ec2_id, body
    except (aiohttp.ClientError, TimeoutError) as e:
        raise Ec2Error("Unavailable", f"the console service could not be reached ({e})",
                       503) from None

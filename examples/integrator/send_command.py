#!/usr/bin/env python3
"""Send one signed command to cloudkernel over NATS and print the reply.

Uses only nats-py and the standard library, as any integrator could. Example:

    export CK_NATS_URL=nats://127.0.0.1:4322 CK_KEY_ID=ck_... CK_KEY_SECRET=...
    python send_command.py operation.cancel \\
        '{"operation_id": "6a1f3f9e-0000-4000-8000-000000000000"}' --idempotency-key cancel-1

Exit status: 0 when the kernel ran the command (or had run it under this idempotency key),
1 on an error reply, 2 on bad arguments or when no reply came. (The variables are CK_*, not
CLOUDKERNEL_*: cloudkernel refuses CLOUDKERNEL_* variables it does not know.)
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import sys
import time
import uuid

import nats
import nats.errors

SUBJECT_PREFIX = "cloudkernel.commands."


def sign(secret: str, timestamp: str, subject: str, idempotency_key: str, body: bytes) -> str:
    """CK1-HMAC-SHA256: HMAC-SHA256 under the secret over the canonical string, in hex."""
    canonical = "\n".join(["CK1-HMAC-SHA256", timestamp, subject, idempotency_key,
                           hashlib.sha256(body).hexdigest()])
    return hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()


async def send(url: str, key_id: str, secret: str, command: str, body: bytes,
               idempotency_key: str, timeout: float) -> dict:
    """Sign, send and wait for the reply; returns the decoded reply."""
    subject = SUBJECT_PREFIX + command
    timestamp = str(int(time.time()))
    headers = {
        "Idempotency-Key": idempotency_key,
        "Cloudkernel-Key-Id": key_id,
        "Cloudkernel-Timestamp": timestamp,
        "Cloudkernel-Signature": sign(secret, timestamp, subject, idempotency_key, body),
    }
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        msg = await nc.request(subject, body, timeout=timeout, headers=headers)
    finally:
        await nc.close()
    return json.loads(msg.data)


def main() -> int:
    """Parse the arguments, send the command, print the reply."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", help="command tag, e.g. operation.cancel or inventory.load")
    parser.add_argument("body", help="the command's fields as a JSON object, or @FILE")
    parser.add_argument("--url", default=os.environ.get("CK_NATS_URL", "nats://127.0.0.1:4322"),
                        help="NATS server (env CK_NATS_URL)")
    parser.add_argument("--key-id", default=os.environ.get("CK_KEY_ID"),
                        help="key id from `cloudkernel keys create` (env CK_KEY_ID)")
    parser.add_argument("--secret", default=os.environ.get("CK_KEY_SECRET"),
                        help="the key's secret (env CK_KEY_SECRET)")
    parser.add_argument("--idempotency-key", default=None,
                        help="reuse it to retry safely (default: a new random key)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    args = parser.parse_args()
    if not args.key_id or not args.secret:
        parser.error("give --key-id and --secret (or CK_KEY_ID and CK_KEY_SECRET)")
    text = args.body
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            text = f.read()
    try:
        json.loads(text)
    except ValueError as e:
        parser.error(f"body is not JSON: {e}")
    key = args.idempotency_key or str(uuid.uuid4())
    try:
        reply = asyncio.run(send(args.url, args.key_id, args.secret, args.command,
                                 text.encode(), key, args.timeout))
    except (nats.errors.Error, OSError, TimeoutError) as e:
        print(f"send_command: no reply from {args.url} ({type(e).__name__}: {e}); is "
              "`cloudkernel intake` running?", file=sys.stderr)
        return 2
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

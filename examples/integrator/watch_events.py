"""Follow cloudkernel's event stream with plain nats-py: a durable pull consumer on EVENTS.

    python watch_events.py nats://127.0.0.1:4322 --filter 'cloudkernel.events.vm.>' \
        --durable billing --count 100 --idle 5

Prints `<position> <subject> <originator id> <actor>` per event, acks it, and skips any event
at or below the last position it printed (a redelivery). A second run with the same durable
name goes on after the last acked event. It stops after --count events (0: no limit) or when
nothing arrives for --idle seconds. Needs only `pip install nats-py`.
"""

import argparse
import asyncio
import sys

import nats
from nats.errors import TimeoutError as FetchTimeout


async def watch(url: str, subject: str, durable: str, count: int, idle: float) -> int:
    """Print events until `count` were printed or the stream stayed idle for `idle` seconds."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    # Creates the durable consumer the first time, binds to it afterwards.
    sub = await js.pull_subscribe(subject, durable=durable, stream="EVENTS")
    last_position, printed = 0, 0
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    try:
        while count == 0 or printed < count:
            # Never fetch more than still wanted: an unacked extra would wait for ack_wait.
            batch = 100 if count == 0 else min(100, count - printed)
            try:
                msgs = await sub.fetch(batch, timeout=min(1.0, idle))
            except FetchTimeout:
                if loop.time() - idle_since >= idle:
                    break
                continue
            idle_since = loop.time()
            for msg in msgs:
                headers = msg.headers or {}
                position = int(headers["Cloudkernel-Position"])
                if position > last_position:  # log order: anything else was seen already
                    print(position, msg.subject, headers["Cloudkernel-Originator-Id"],
                          headers["Cloudkernel-Actor"], flush=True)
                    last_position, printed = position, printed + 1
                await msg.ack()
    finally:
        await nc.close()
    return printed


def main() -> None:
    """Parse the arguments and watch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="NATS server, e.g. nats://127.0.0.1:4322")
    parser.add_argument("--filter", default="cloudkernel.events.>", help="subject filter")
    parser.add_argument("--durable", default="integrator-example", help="consumer name")
    parser.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    parser.add_argument("--idle", type=float, default=5.0, help="stop after N idle seconds")
    args = parser.parse_args()
    if args.count < 0 or args.idle <= 0:
        parser.error("--count must be 0 or more and --idle more than 0")
    printed = asyncio.run(watch(args.url, args.filter, args.durable, args.count, args.idle))
    print(f"watched {printed} events", file=sys.stderr)


if __name__ == "__main__":
    main()

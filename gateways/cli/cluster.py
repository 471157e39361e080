"""`cloudkernel cluster status [--json]`: the control plane as it stands now.

- kernels: each kernel's member row (alive or lapsed, last beat), the partitions it holds,
  and every partition's lease (owner, epoch, seconds left, seconds held) from PostgreSQL;
  the embedded default (SQLite) runs one kernel without leases, and says so;
- NATS: every stream's replicas as configured, its leader and each replica's state (current,
  lag), and so every node that holds a stream;
- projections: each read model's lag behind the log.

Exit 0; 3 when PostgreSQL or NATS could not be reached (what could be read is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import msgspec

from kernel.bootstrap.processes import projection_runners
from kernel.contracts.connection import connect
from kernel.contracts.events import EVENTS_STREAM
from kernel.contracts.steps import RESULTS_STREAM, STEPS_STREAM
from kernel.leases import LeaseTable
from kernel.settings import Settings
from projections.catalog import MODELS

EXIT_UNREACHABLE = 3
STREAMS = (EVENTS_STREAM, STEPS_STREAM, RESULTS_STREAM, "ACL_EVENTS", "AUDIT_CHECKPOINTS")


def add_cluster_command(sub: Any) -> None:
    """Register `cluster status`."""
    p = sub.add_parser("cluster", help="the control plane: kernels and their partitions, "
                       "NATS nodes and streams, projection lag",
                       description="The control plane as it stands now.")
    p.set_defaults(run=cmd_status, json=False)
    actions = p.add_subparsers(metavar="ACTION")
    status = actions.add_parser("status", help="kernels, partitions and leases, NATS nodes and "
                                "stream replicas, projection lag (default)")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for NATS (default 5)")
    status.set_defaults(run=cmd_status)


def cluster_status(settings: Settings, *, timeout: float = 5.0) -> dict[str, Any]:
    """The kernels, NATS and projections sections; a section that could not be read holds
    an `error` instead."""
    return {"kernels": _kernels(settings), "nats": asyncio.run(_nats(settings, timeout)),
            "projections": _projections(settings)}


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Print the status; exit 3 if a part could not be reached."""
    status = cluster_status(settings, timeout=getattr(args, "timeout", 5.0))
    if args.json:
        print(msgspec.json.encode(status).decode())
    else:
        print(_text(status))
    unreachable = any("error" in status[k] for k in ("kernels", "nats"))
    return EXIT_UNREACHABLE if unreachable else 0


def _kernels(settings: Settings) -> dict[str, Any]:
    if settings.store != "postgres":
        return {"leases": False, "note": "SQLite: one kernel works every operation, "
                "without leases"}
    table = LeaseTable(settings.postgres_dsn, settings.postgres_schema,
                       partitions=settings.kernel_partitions, period=settings.lease_seconds,
                       connect_timeout=settings.postgres_connect_timeout)
    try:
        leases, members = table.leases(), table.members()
    except Exception as e:
        return {"leases": True, "error": f"PostgreSQL: {type(e).__name__}: {e}"}
    finally:
        table.close()
    held: dict[str, list[int]] = {}
    for lease in leases:
        if lease.owner is not None and lease.expires_in > 0:
            held.setdefault(lease.owner, []).append(lease.partition)
    return {
        "leases": True, "lease_seconds": settings.lease_seconds,
        "members": [{"name": m.name, "alive": m.alive, "seen_ago": round(m.seen_ago, 3),
                     "started_at": m.started_at.isoformat(),
                     "partitions": held.get(m.name, [])} for m in members],
        "partitions": [{"partition": lease.partition, "owner": lease.owner,
                        "epoch": lease.epoch, "live": lease.owner is not None
                        and lease.expires_in > 0,
                        "expires_in": round(lease.expires_in, 3)
                        if lease.expires_in != float("-inf") else None,
                        "held_for": round(lease.held_for, 3)} for lease in leases],
        "unowned": [lease.partition for lease in leases
                    if lease.owner is None or lease.expires_in <= 0],
    }


async def _nats(settings: Settings, timeout: float) -> dict[str, Any]:
    try:
        nc = await connect(settings.nats_servers, name="cloudkernel-cluster-status",
                           timeout=timeout)
    except Exception as e:
        return {"error": f"NATS at {', '.join(settings.nats_servers)}: {e}"}
    streams: list[dict[str, Any]] = []
    nodes: dict[str, dict[str, Any]] = {}
    try:
        js = nc.jetstream(timeout=timeout)
        for name in STREAMS:
            try:
                info = await js.stream_info(name)
            except Exception as e:  # not made (a service not run) or no leader now
                streams.append({"name": name, "error": f"{type(e).__name__}: {e}"})
                continue
            cluster = info.cluster
            replicas = [] if cluster is None else [
                {"name": r.name, "current": bool(r.current), "lag": r.lag or 0}
                for r in cluster.replicas or []]
            leader = cluster.leader if cluster is not None else None
            streams.append({"name": name, "replicas": info.config.num_replicas or 1,
                            "messages": info.state.messages, "leader": leader,
                            "followers": replicas})
            holders: list[str] = [str(r["name"]) for r in replicas]
            if leader:
                holders.insert(0, leader)
            for node in holders:
                nodes.setdefault(node, {"name": node, "leads": [], "holds": []})
                nodes[node]["holds"].append(name)
            if leader:
                nodes[leader]["leads"].append(name)
        server = nc.connected_server_version
        connected = nc.connected_url.netloc if nc.connected_url else None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
    return {"connected_to": connected, "server_version": str(server), "streams": streams,
            "nodes": sorted(nodes.values(), key=lambda n: n["name"])}


def _projections(settings: Settings) -> dict[str, Any]:
    try:
        with projection_runners(settings, list(MODELS)) as runners:
            lags = {r.name: r.lag() for r in runners}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {name: {"position": lag.position, "head": lag.head, "behind": lag.positions,
                   "seconds": round(lag.seconds, 3)} for name, lag in sorted(lags.items())}


def _text(status: dict[str, Any]) -> str:
    lines = []
    kernels = status["kernels"]
    if "error" in kernels:
        lines.append(f"kernels: cannot read the leases: {kernels['error']}")
    elif not kernels["leases"]:
        lines.append(f"kernels: {kernels['note']}")
    else:
        alive = [m for m in kernels["members"] if m["alive"]]
        lines.append(f"kernels: {len(alive)} alive, leases of {kernels['lease_seconds']} s")
        for m in kernels["members"]:
            parts = ",".join(map(str, m["partitions"])) or "none"
            lines.append(f"  {m['name']:<32} {'alive' if m['alive'] else 'lapsed':<7} "
                         f"beat {m['seen_ago']:.1f} s ago  partitions {parts}")
        if kernels["unowned"]:
            lines.append(f"  partitions without a live lease: "
                         f"{','.join(map(str, kernels['unowned']))}")
        for p in kernels["partitions"]:
            left = "-" if p["expires_in"] is None else f"{p['expires_in']:.1f} s"
            lines.append(f"  partition {p['partition']:>3}  {p['owner'] or '-':<32} "
                         f"epoch {p['epoch']:<5} expires in {left:<9} held "
                         f"{p['held_for']:.1f} s")
    nats = status["nats"]
    if "error" in nats:
        lines.append(f"nats: {nats['error']}")
    else:
        lines.append(f"nats: connected to {nats['connected_to']} (server "
                     f"{nats['server_version']}), {len(nats['nodes'])} node(s)")
        for node in nats["nodes"]:
            lines.append(f"  {node['name']:<12} leads {','.join(node['leads']) or '-'}")
        for s in nats["streams"]:
            if "error" in s:
                lines.append(f"  stream {s['name']:<18} {s['error']}")
                continue
            followers = ", ".join(f"{r['name']}{'' if r['current'] else ' (behind)'}"
                                  for r in s["followers"]) or "-"
            lines.append(f"  stream {s['name']:<18} R{s['replicas']}  leader {s['leader']}  "
                         f"followers {followers}  {s['messages']} msgs")
    projections = status["projections"]
    if "error" in projections:
        lines.append(f"projections: {projections['error']}")
    else:
        lines.append("projections:")
        for name, lag in projections.items():
            lines.append(f"  {name:<24} {lag['behind']} behind ({lag['seconds']:.1f} s)")
    return "\n".join(lines)

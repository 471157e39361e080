"""Streams on a 3-node NATS cluster: made with the replicas of `nats_replicas`, and brought to
that count when found with another (a single-node setup grown into a cluster). The cluster
is real: three nats-server processes routed on loopback."""

import asyncio
from pathlib import Path

import nats
import pytest
from fixtures.nats_cluster import NatsCluster

from aggregates.errors import ConfigError
from gateways.stream.relay import ensure_events_stream
from gateways.stream.streams import ensure_streams
from kernel.contracts.events import EVENTS_STREAM
from kernel.contracts.steps import RESULTS_STREAM, STEPS_STREAM
from kernel.settings import load_settings


def test_streams_are_made_with_the_replicas_asked_and_brought_to_them(
        nats_cluster: NatsCluster) -> None:
    streams = [EVENTS_STREAM, STEPS_STREAM, RESULTS_STREAM]

    async def scenario() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        nc = await nats.connect(nats_cluster.urls)
        try:
            js = nc.jetstream(timeout=10)
            await ensure_events_stream(js)  # as one node made them
            await ensure_streams(js)
            await js.publish("cloudkernel.events.x", b"kept", stream=EVENTS_STREAM)
            before = await nats_cluster.replicas(streams)
            await ensure_events_stream(js, replicas=3)  # the setting grew to the cluster
            await ensure_streams(js, replicas=3)
            grown = await nats_cluster.replicas(streams)
            await ensure_streams(js, replicas=3)  # asked again: nothing changes
            info = await js.stream_info(EVENTS_STREAM)
            assert info.state.messages == 1  # the update kept what the stream held
            assert info.config.deny_delete and info.config.allow_atomic  # and its config
            return before, grown, await nats_cluster.replicas(streams)
        finally:
            await nc.close()

    before, grown, again = asyncio.run(scenario())
    assert before == dict.fromkeys(streams, 1)
    assert grown == again == dict.fromkeys(streams, 3)


def test_the_setting_is_checked(tmp_path: Path) -> None:
    none = tmp_path / "cloudkernel.toml"
    none.write_text("")
    assert load_settings(env={"CLOUDKERNEL_NATS_REPLICAS": "3"}, config_path=none) \
        .nats_replicas == 3
    for bad in ("0", "6", "three"):
        with pytest.raises(ConfigError, match="nats_replicas"):
            load_settings(env={"CLOUDKERNEL_NATS_REPLICAS": bad}, config_path=none)

"""Builds the Sparkplug B edge node of a site (`sparkplug` section) and runs it beside the
service: the same broker, TLS and credentials as the JSON interface, a connection of its own
(adapters/scada/sparkplug_node.py says why), bdSeq kept in the service's database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from adapters.scada.sparkplug_codec import Metric
from adapters.scada.sparkplug_node import EdgeNodeSettings, SparkplugEdgeNode
from agent.app.assembly import Service
from agent.app.mqtt_link import session_settings
from agent.app.sparkplug import SparkplugBridge
from agent.ports import Clock

__all__ = ["BDSEQ_STATE", "edge_node", "run_edge_node"]

log = logging.getLogger("gridflex.sparkplug")

BDSEQ_STATE = "sparkplug_bdseq"


def edge_node(
    service: Service, view: Callable[[], dict[str, Any]], clock: Clock
) -> SparkplugEdgeNode | None:
    config = service.config
    spb, mqtt = config.sparkplug, config.mqtt
    if spb is None or mqtt is None:
        return None
    client_id = spb.client_id or f"{mqtt.client_id or f'gridflex-{config.site.id}'}-spb"
    settings = replace(
        session_settings(mqtt, config.topic_prefix, client_id, session_expiry_s=0),
        clean_start=True,  # an edge node's state lives in its births, not in a broker session
        manual_acks=False,
        will=None,
        birth=None,
        max_queued_messages=1000,
    )
    bridge = SparkplugBridge(service, view, clock, spb.accept_commands)
    saved = service.store.load_state(BDSEQ_STATE)
    last = saved.get("bdseq") if isinstance(saved, dict) else None
    first = 0 if not isinstance(last, int) else (last + 1) % 256

    def keep(bdseq: int) -> None:
        service.store.save_state(BDSEQ_STATE, {"bdseq": bdseq})

    node = SparkplugEdgeNode(
        EdgeNodeSettings(
            mqtt=settings,
            group_id=spb.group_id,
            edge_node_id=spb.edge_node_id or config.site.id,
            primary_host_id=spb.primary_host_id,
            report_every_s=spb.report_every_s,
        ),
        bridge,
        _queued(service, bridge),
        bdseq=first,
        on_bdseq=keep,
    )
    bridge.report_now = node.wake
    return node


def _queued(
    service: Service, bridge: SparkplugBridge
) -> Callable[[str | None, list[Metric]], None]:
    """A write from SCADA is queued for the cycle like any inbound message."""

    def command(device_id: str | None, metrics: list[Metric]) -> None:
        def take() -> str:
            bridge.command(device_id, metrics)
            return "taken"

        service.inbox.put("sparkplug/command", take)

    return command


async def run_edge_node(node: SparkplugEdgeNode, stop: asyncio.Event) -> None:
    """Run until `stop`, then NDEATH; a failure is logged and the node started again."""
    while not stop.is_set():
        try:
            await node.run(stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Sparkplug edge node failed; starting it again in 5 s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)

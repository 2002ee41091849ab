"""A site on the fleet bus, against real NATS servers on 127.0.0.1: a hub (JetStream domain
`hub`) and the site's leaf node (domain `site-a`), the leaf's link to the hub through a relay the
test cuts and heals, and the site as `gridflex run` runs it (run_service) over simulated loads.

One scenario, in order: a signed command from the hub is taken and met, and its acks reach the
hub; the link is cut: the site keeps its obligation and keeps writing telemetry, and a command
sent meanwhile whose expiry passes before the heal is refused when it arrives; after the heal
every telemetry message written during the cut is at the hub once and in order; a replayed
command and one signed for another site are refused with their reasons."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.transport.nats_bus import (
    FLEET_IN_STREAM,
    OUT_STREAM,
    BusAddress,
    NatsBus,
    command_subject,
)
from agent.app.runner import run_service
from agent.config import SiteConfig
from tests.helpers.cli import gridflex
from tests.helpers.nats_fleet import (
    KEY,
    CutLink,
    NatsServer,
    command,
    fleet_site,
    nats_server_binary,
)

pytestmark = pytest.mark.skipif(nats_server_binary() is None, reason="nats-server not installed")


def _site(tmp_path: Path, url: str) -> SiteConfig:
    return fleet_site(tmp_path, "site-a", url)


async def _until(test: Callable[[], Awaitable[Any]], timeout_s: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if found := await test():
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {test.__name__}")
        await asyncio.sleep(0.1)


def _limit(event_id: str, kw: float) -> dict[str, Any]:
    return {"event_id": event_id, "kind": "limit", "target_kw": kw,
            "issued_at": datetime.now(UTC).isoformat()}  # fmt: skip


class Hub:
    def __init__(self, bus: NatsBus) -> None:
        self.bus = bus

    async def send(self, seq: int, dispatch: dict[str, Any], *, expires_s: float = 60.0,
                   site: str = "site-a") -> None:  # fmt: skip
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=expires_s)
        data = command(site, seq, "hub-1", KEY, issued_at=now, expires_at=expires_at,
                       dispatch=dispatch)  # fmt: skip
        await self.bus.publish(command_subject("gridflex", "site-a"), data,
                               msg_id=uuid.uuid4().hex)  # fmt: skip

    async def messages(self, suffix: str) -> list[dict[str, Any]]:
        stored = await self.bus.stream_messages(FLEET_IN_STREAM)
        return [json.loads(m.data) for m in stored if m.subject.endswith(suffix)]

    async def ack(self, event_id: str, status: str, reason: str = "") -> dict[str, Any] | None:
        for ack in await self.messages(".out.dispatch.ack"):
            if ack["event_id"] == event_id and ack["status"] == status and reason in ack["reason"]:
                return ack
        return None


def test_a_site_keeps_its_word_through_a_cut_link(tmp_path: Path) -> None:
    hub_server = NatsServer("hub", "hub", tmp_path / "hub").start()
    link = CutLink(hub_server.leaf_port)
    site_server = NatsServer("site-a", "site-a", tmp_path / "site",
                             leaf_remote_port=link.port).start()  # fmt: skip
    config = _site(tmp_path, site_server.url)
    try:
        asyncio.run(_scenario(config, hub_server, site_server, link))
    finally:
        link.close()
        site_server.stop()
        hub_server.stop()


async def _scenario(config: SiteConfig, hub_server: NatsServer, site_server: NatsServer,
                    link: CutLink) -> None:  # fmt: skip
    hub_bus, site_bus = NatsBus(BusAddress(hub_server.url)), NatsBus(BusAddress(site_server.url))
    await hub_bus.connect()
    await site_bus.connect()
    made = await asyncio.to_thread(gridflex, "fleet", "--hub", hub_server.url, "init", "--site",
                                   "site-a")  # fmt: skip
    assert made.returncode == 0, made.stderr
    hub = Hub(hub_bus)
    stop = asyncio.Event()
    service = asyncio.create_task(run_service(config, stop))
    try:
        await _until(lambda: hub.messages(".out.telemetry"))  # the site is on the fleet

        # 1. a command is taken and met; its acks reach the hub
        await hub.send(1, _limit("e1", 30.0))
        await _until(lambda: hub.ack("e1", "active"))

        # 2. the link is cut: the site keeps the limit and keeps writing
        link.cut()
        await hub.send(2, _limit("e2", 50.0), expires_s=1.5)
        cut_at = datetime.now(UTC)
        await asyncio.sleep(5.0)  # the command's expiry passes while the link is down
        during = [m for m in await site_bus.stream_messages(OUT_STREAM)
                  if m.subject.endswith(".telemetry")
                  and datetime.fromisoformat(json.loads(m.data)["at"]) >= cut_at]  # fmt: skip
        assert len(during) >= 2  # telemetry every 2 s
        assert all(json.loads(m.data)["site_kw"] <= 30.0 + 1e-6 for m in during)
        held = [m.data for m in await hub_bus.stream_messages(FLEET_IN_STREAM)]
        assert not any(m.data in held for m in during)  # the cut is real: none is at the hub

        # 3. healed: the expired command is refused, the telemetry of the cut arrives once, in
        # order
        link.heal()
        await _until(lambda: hub.ack("e2", "rejected", "expired at"))
        telemetry = await _until(lambda: _arrived(hub, [m.data for m in during]))
        assert telemetry == sorted(telemetry)
        assert await hub.ack("e1", "active") is not None
        assert await hub.ack("e2", "accepted") is None

        # 4. a replay and a command for another site are refused, with their reasons
        await hub.send(1, _limit("e3", 10.0))
        await _until(lambda: hub.ack("e3", "rejected", "replayed or out of order: seq 1"))
        await hub.send(5, _limit("e4", 10.0), site="site-b")
        await _until(lambda: hub.ack("e4", "rejected", "bad signature"))

        # 5. the hub's command line: a limit sent and acked, every site's last word
        key = {"GRIDFLEX_FLEET_KEY": KEY.decode()}
        sent = await asyncio.to_thread(
            gridflex, "fleet", "--hub", hub_server.url, "send", "--site", "site-a", "--key-id",
            "hub-1", "--event-id", "e5", "--limit-kw", "40", env=key,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["status"] in {"accepted", "active"}  # the latest seen
        shown = await asyncio.to_thread(gridflex, "fleet", "--hub", hub_server.url, "status")
        (line,) = [json.loads(text) for text in shown.stdout.splitlines()]
        assert line["site"] == "site-a"
        assert line["age_s"] < 10
        assert line["site_kw"] <= 40.0 + 1e-6
        assert line["ceiling_kw"] == pytest.approx(30.0)  # e1's 30 kW under e5's 40 kW
        assert "e1" in line["events"]  # (e5 may be newer than the telemetry the hub holds)
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
        await hub_bus.close()
        await site_bus.close()


async def _arrived(hub: Hub, written: list[bytes]) -> list[str] | None:
    """The `at` of each message written during the cut as the hub holds them, once each (None
    while some are missing)."""
    stored = await hub.bus.stream_messages(FLEET_IN_STREAM)
    held = [m.data for m in stored]
    if not all(held.count(data) == 1 for data in written):
        assert all(held.count(data) <= 1 for data in written), "a message stored twice"
        return None
    return [json.loads(data)["at"] for data in held if data in written]


def test_an_ack_made_while_the_sites_own_server_is_down_reaches_the_hub_after_it_restarts(
    tmp_path: Path,
) -> None:
    """The outbox holds an ack while the site's NATS server is down (a restart, an upgrade), and
    publishes it once the link to that server is back: nothing else wakes it then."""
    hub_server = NatsServer("hub", "hub", tmp_path / "hub").start()
    site_server = NatsServer("site-a", "site-a", tmp_path / "site",
                             leaf_remote_port=hub_server.leaf_port).start()  # fmt: skip
    config = _site(tmp_path, site_server.url)

    async def scenario() -> None:
        hub_bus = NatsBus(BusAddress(hub_server.url))
        await hub_bus.connect()
        await hub_bus.ensure_hub(prefix="gridflex", site_domains=["site-a"])
        hub = Hub(hub_bus)
        stop = asyncio.Event()
        service = asyncio.create_task(run_service(config, stop))
        try:
            await _until(lambda: hub.messages(".out.telemetry"))
            end = datetime.now(UTC) + timedelta(seconds=6)
            await hub.send(1, {**_limit("e1", 30.0), "end": end.isoformat()})
            await _until(lambda: hub.ack("e1", "active"))
            site_server.stop()
            # the event completes (its ack made and stored) while the server is down
            await asyncio.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()) + 2.0)
            site_server.start()
            await _until(lambda: hub.ack("e1", "completed"))
        finally:
            stop.set()
            await asyncio.wait_for(service, 30)
            await hub_bus.close()

    try:
        asyncio.run(scenario())
    finally:
        site_server.stop()
        hub_server.stop()

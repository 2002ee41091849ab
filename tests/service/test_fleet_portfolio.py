"""A portfolio shed (`gridflex fleet shed`): the split as a table (agent.service.portfolio), then
against real NATS servers on 127.0.0.1: a hub and two sites, each on its own leaf node and run
as `gridflex run` runs it; the shed is split by the flexible load each offers and met by
measured load; one site is stopped mid-shed and its share moves to the other within the
deadline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.transport.nats_bus import FLEET_IN_STREAM, BusAddress, NatsBus
from agent.app.runner import run_service
from agent.service.portfolio import allocate, reallocate
from tests.helpers.cli import gridflex
from tests.helpers.nats_fleet import KEY, NatsServer, fleet_site, nats_server_binary

SPLITS = [
    # offers, shed, shares, shortfall
    ({"a": 100.0, "b": 100.0}, 60.0, {"a": 30.0, "b": 30.0}, 0.0),
    ({"a": 300.0, "b": 100.0}, 100.0, {"a": 75.0, "b": 25.0}, 0.0),
    ({"a": 30.0, "b": 10.0}, 60.0, {"a": 30.0, "b": 10.0}, 20.0),  # every offer, the rest short
    ({"a": 0.0, "b": -5.0}, 10.0, {"a": 0.0, "b": 0.0}, 10.0),  # nothing offered
]


@pytest.mark.parametrize(("offers", "shed_kw", "shares", "short_kw"), SPLITS)
def test_a_shed_is_split_by_what_each_site_offers(offers: dict[str, float], shed_kw: float,
                                                  shares: dict[str, float],
                                                  short_kw: float) -> None:  # fmt: skip
    got, shortfall = allocate(offers, shed_kw)
    assert got == pytest.approx(shares)
    assert shortfall == pytest.approx(short_kw)


def test_a_failed_sites_share_moves_to_the_others_within_what_they_still_offer() -> None:
    shares = {"a": 30.0, "b": 30.0, "c": 20.0}
    moved, unplaced = reallocate(shares, {"b"}, {"a": 60.0, "c": 20.0})
    assert moved == pytest.approx({"a": 52.5, "b": 0.0, "c": 27.5})
    assert unplaced == pytest.approx(0.0)
    moved, unplaced = reallocate(shares, {"b"}, {"a": 10.0, "c": 5.0})
    assert moved == pytest.approx({"a": 40.0, "b": 0.0, "c": 25.0})
    assert unplaced == pytest.approx(15.0)


@pytest.mark.skipif(nats_server_binary() is None, reason="nats-server not installed")
def test_a_portfolio_shed_is_met_and_a_stopped_sites_share_moves(tmp_path: Path) -> None:
    hub = NatsServer("hub", "hub", tmp_path / "hub").start()
    leaves = [NatsServer(name, name, tmp_path / name, leaf_remote_port=hub.leaf_port).start()
              for name in ("site-a", "site-b")]  # fmt: skip
    try:
        asyncio.run(_scenario(tmp_path, hub, leaves))
    finally:
        for server in (*leaves, hub):
            server.stop()


async def _scenario(tmp_path: Path, hub: NatsServer, leaves: list[NatsServer]) -> None:
    made = await asyncio.to_thread(gridflex, "fleet", "--hub", hub.url, "init", "--site",
                                   "site-a", "--site", "site-b")  # fmt: skip
    assert made.returncode == 0, made.stderr
    stops = {leaf.name: asyncio.Event() for leaf in leaves}
    configs = {leaf.name: fleet_site(tmp_path, leaf.name, leaf.url) for leaf in leaves}
    services = {name: asyncio.create_task(run_service(config, stops[name]))
                for name, config in configs.items()}  # fmt: skip
    bus = NatsBus(BusAddress(hub.url))
    await bus.connect()
    try:
        for name in stops:  # both sites heard at the hub
            await _until(lambda name=name: bus.last_message(  # type: ignore[misc]
                FLEET_IN_STREAM, f"gridflex.{name}.out.telemetry"))  # fmt: skip
        shed = asyncio.create_task(asyncio.to_thread(
            gridflex, "fleet", "--hub", hub.url, "shed", "--event-id", "p1", "--kw", "60",
            "--for-s", "600", "--key-id", "hub-1", "--deadline-s", "3", "--watch-s", "14",
            env={"GRIDFLEX_FLEET_KEY": KEY.decode()}))  # fmt: skip
        await asyncio.sleep(6)  # both limits taken and met
        a_kw = await _site_kw(bus, "site-a")
        assert a_kw <= 105.0 - 30.0 + 1e-6
        stops["site-b"].set()  # site-b goes away mid-shed
        await asyncio.wait_for(services["site-b"], 30)
        done = await shed
        assert done.returncode == 0, done.stderr
        lines: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
        assert lines[0]["allocated"] == pytest.approx({"site-a": 30.0, "site-b": 30.0})
        assert lines[0]["target_kw"] == pytest.approx(2 * 105.0 - 60.0)
        (move,) = [line for line in lines if "moved_to" in line]
        assert move["failed"] == ["site-b"]
        assert move["moved_to"] == pytest.approx({"site-a": 60.0})
        await _until(lambda: _below(bus, "site-a", 105.0 - 60.0))  # site-a takes it all
        watched = [line for line in lines if "portfolio_kw" in line]
        # met from the fourth second on (the first ones: the sites shedding), site-b's part
        # counted at its last word after it stopped
        assert all(line["met"] for line in watched[3:]), watched
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.gather(*services.values(), return_exceptions=True)
        await bus.close()


async def _site_kw(bus: NatsBus, site: str) -> float:
    data = await bus.last_message(FLEET_IN_STREAM, f"gridflex.{site}.out.telemetry")
    assert data is not None
    return float(json.loads(data)["site_kw"])


async def _below(bus: NatsBus, site: str, kw: float) -> bool:
    return await _site_kw(bus, site) <= kw + 1e-6


async def _until(test: Any, timeout_s: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := await test()):
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout_s} s"
        await asyncio.sleep(0.2)
    return found

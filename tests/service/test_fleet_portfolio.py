"""Portfolio obligations (`gridflex fleet shed | ceiling`): the split and the moves as tables
(agent.service.portfolio: the cheapest offered MWh first), then against real NATS servers on
127.0.0.1 with a hub and two sites, each on its own leaf node and run as `gridflex run` runs
it: a ceiling is split and met by measured load, and a site stopped mid-way has its share moved
to the other within the deadline; a site whose miners are stuck falls short, the part it misses
moves, and `gridflex fleet status` and the fleet page say so."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.transport.nats_bus import BusAddress, NatsBus
from agent.app.published import flex_offer
from agent.app.runner import run_service
from agent.domain.fleet import (
    ControlMode,
    DeviceKind,
    DeviceSpec,
    Fleet,
    FleetState,
    LoadClass,
    Priority,
)
from agent.domain.settings import Policy
from agent.domain.signals import Signals
from agent.policy import Decision, Memory, decide
from agent.service.portfolio import Offer, allocate, lost_usd_per_h, reallocate, split
from tests.helpers.cli import gridflex
from tests.helpers.fleet_rig import at_most, held, until
from tests.helpers.mqtt_watch import GRIDFLEX
from tests.helpers.nats_fleet import KEY, NatsServer, fleet_site, nats_server_binary
from tests.helpers.peers import free_port
from tests.policy.site import T0, price

SPLITS = [
    # offers as (value $/MWh, kW) steps, shed, shares, shortfall
    ({"a": [(90, 100)], "b": [(90, 100)]}, 60.0, {"a": 30.0, "b": 30.0}, 0.0),  # alike: alike
    ({"a": [(0, 300)], "b": [(0, 100)]}, 100.0, {"a": 75.0, "b": 25.0}, 0.0),  # one level: pro rata
    ({"a": [(117, 100)], "b": [(60, 50)]}, 80.0, {"a": 30.0, "b": 50.0}, 0.0),  # cheapest first
    ({"a": [(40, 20), (117, 80)], "b": [(60, 50)]}, 80.0, {"a": 30.0, "b": 50.0}, 0.0),
    ({"a": [(30, 30)], "b": [(10, 10)]}, 60.0, {"a": 30.0, "b": 10.0}, 20.0),  # the rest short
    ({"a": [(0, 0.0)], "b": [(5, -5.0)]}, 10.0, {"a": 0.0, "b": 0.0}, 10.0),  # nothing offered
]


@pytest.mark.parametrize(("offers", "shed_kw", "shares", "short_kw"), SPLITS)
def test_a_shed_takes_the_cheapest_offered_mwh_first(offers: dict[str, Offer], shed_kw: float,
                                                     shares: dict[str, float],
                                                     short_kw: float) -> None:  # fmt: skip
    got, shortfall = allocate(offers, shed_kw)
    assert got == pytest.approx(shares)
    assert shortfall == pytest.approx(short_kw)


def test_the_split_costs_no_more_than_any_other_split_of_the_same_shed() -> None:
    offers: dict[str, Offer] = {"a": [(40, 20), (117, 80)], "b": [(60, 50)], "c": [(90, 40)]}
    shares, _ = allocate(offers, 100.0)
    best = lost_usd_per_h(offers, shares)
    assert best == pytest.approx((20 * 40 + 50 * 60 + 30 * 90) / 1000)
    for a_kw in range(0, 101, 5):  # every split on a 5 kW grid within the offers
        for b_kw in range(0, min(50, 100 - a_kw) + 1, 5):
            c_kw = 100 - a_kw - b_kw
            if c_kw <= 40:
                other = lost_usd_per_h(offers, {"a": a_kw, "b": b_kw, "c": c_kw})
                assert best <= other + 1e-9


LOADS = {"a": 100.0, "b": 50.0}
OFFERS: dict[str, Offer] = {"a": [(90, 90)], "b": [(60, 40)]}
ORDERS = [
    # shed or ceiling, target, shed, limits, shortfall
    ({"shed_kw": 60.0}, 90.0, 60.0, {"a": 80.0, "b": 10.0}, 0.0),  # b's cheaper 40 first
    ({"ceiling_kw": 120.0}, 120.0, 30.0, {"a": 100.0, "b": 20.0}, 0.0),  # a ceiling: shed 30
    ({"ceiling_kw": 180.0}, 180.0, 0.0, {"a": 120.0, "b": 60.0}, 0.0),  # room shared by load
    ({"ceiling_kw": 10.0}, 10.0, 140.0, {"a": 10.0, "b": 10.0}, 10.0),  # beyond the offers
]


@pytest.mark.parametrize(("order", "target", "shed", "limits", "short"), ORDERS)
def test_a_shed_or_a_ceiling_becomes_each_sites_limit(order: dict[str, float], target: float,
                                                      shed: float, limits: dict[str, float],
                                                      short: float) -> None:  # fmt: skip
    plan = split(LOADS, OFFERS, **order)
    assert (plan.target_kw, plan.shed_kw, plan.shortfall_kw) == pytest.approx((target, shed, short))
    assert plan.limits_kw == pytest.approx(limits)


MOVES = [
    # shares, moving (site: kW), failed, offers, new shares, unplaced
    (
        {"a": 30.0, "b": 30.0, "c": 20.0},
        {"b": 30.0},
        {"b"},
        {"a": [(90, 90)], "b": [(90, 30)], "c": [(90, 40)]},
        {"a": 52.5, "b": 0.0, "c": 27.5},
        0.0,
    ),  # moved in proportion to what is left (60 : 20)
    (
        {"a": 30.0, "b": 30.0, "c": 20.0},
        {"b": 30.0},
        {"b"},
        {"a": [(90, 40)], "b": [(90, 30)], "c": [(90, 25)]},
        {"a": 40.0, "b": 0.0, "c": 25.0},
        15.0,
    ),  # more than they have left: the rest unplaced
    (
        {"a": 30.0, "b": 30.0, "c": 20.0},
        {"b": 30.0},
        {"b"},
        {"a": [(120, 90)], "b": [(90, 30)], "c": [(50, 60)]},
        {"a": 30.0, "b": 0.0, "c": 50.0},
        0.0,
    ),  # the cheapest room first
    (
        {"a": 30.0, "b": 30.0},
        {"b": 12.0},
        set(),
        {"a": [(90, 100)], "b": [(90, 30)]},
        {"a": 42.0, "b": 18.0},
        0.0,
    ),  # b falls short by 12: a takes it, b keeps the rest
]


@pytest.mark.parametrize("case", MOVES)
def test_a_failed_or_short_sites_kw_move_to_the_cheapest_room_left(case: tuple[Any, ...]) -> None:
    shares, moving, failed, offers, new, unplaced = case
    moved, left = reallocate(shares, moving, offers, failed)
    assert moved == pytest.approx(new)
    assert left == pytest.approx(unplaced)


needs_nats = pytest.mark.skipif(nats_server_binary() is None, reason="nats-server not installed")


@needs_nats
def test_a_portfolio_ceiling_is_met_and_a_stopped_sites_share_moves(tmp_path: Path) -> None:
    asyncio.run(_two_sites(tmp_path, _ceiling_then_stop, stuck_b=False))


@needs_nats
def test_a_site_that_falls_short_has_its_miss_moved_and_the_fleet_view_says_so(
    tmp_path: Path,
) -> None:
    asyncio.run(_two_sites(tmp_path, _short_site, stuck_b=True))


Scenario = Callable[[NatsServer, NatsBus, dict[str, asyncio.Event],
                     dict[str, asyncio.Task[None]]], Awaitable[None]]  # fmt: skip


async def _two_sites(tmp_path: Path, scenario: Scenario, *, stuck_b: bool) -> None:
    """A hub and two 105 kW sites, each on its own leaf node and run as `gridflex run` runs it
    (site-b's miners stuck at full power when `stuck_b`)."""
    hub = NatsServer("hub", "hub", tmp_path / "hub").start()
    leaves = [NatsServer(name, name, tmp_path / name, leaf_remote_port=hub.leaf_port).start()
              for name in ("site-a", "site-b")]  # fmt: skip
    made = await asyncio.to_thread(gridflex, "fleet", "--hub", hub.url, "init", "--site",
                                   "site-a", "--site", "site-b")  # fmt: skip
    assert made.returncode == 0, made.stderr
    stops = {leaf.name: asyncio.Event() for leaf in leaves}
    configs = {leaf.name: fleet_site(tmp_path, leaf.name, leaf.url,
                                     stuck=stuck_b and leaf.name == "site-b")
               for leaf in leaves}  # fmt: skip
    services = {name: asyncio.create_task(run_service(config, stops[name]))
                for name, config in configs.items()}  # fmt: skip
    bus = NatsBus(BusAddress(hub.url))
    await bus.connect()
    try:
        for name in stops:  # both sites heard at the hub
            await until(lambda name=name: held(bus, name))  # type: ignore[misc]
        await scenario(hub, bus, stops, services)
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.gather(*services.values(), return_exceptions=True)
        await bus.close()
        for server in (*leaves, hub):
            server.stop()


def _obligation(hub: NatsServer, kind: str, kw: float, watch_s: float) -> Any:
    return asyncio.to_thread(
        gridflex, "fleet", "--hub", hub.url, kind, "--event-id", "p1", "--kw", str(kw),
        "--for-s", "600", "--key-id", "hub-1", "--deadline-s", "3", "--watch-s", str(watch_s),
        env={"GRIDFLEX_FLEET_KEY": KEY.decode()})  # fmt: skip


async def _ceiling_then_stop(hub: NatsServer, bus: NatsBus, stops: dict[str, asyncio.Event],
                             services: dict[str, asyncio.Task[None]]) -> None:  # fmt: skip
    # at most 150 kW from 2 x 105 kW: a shed of 60, split 30/30 (the sites are alike)
    ceiling = asyncio.create_task(_obligation(hub, "ceiling", 150.0, 14))
    await asyncio.sleep(6)  # both limits taken and met
    assert await at_most(bus, "site-a", 105.0 - 30.0, 1e-6)
    stops["site-b"].set()  # site-b goes away mid-shed
    await asyncio.wait_for(services["site-b"], 30)
    done = await ceiling
    assert done.returncode == 0, done.stderr
    lines: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["allocated"] == pytest.approx({"site-a": 30.0, "site-b": 30.0})
    assert lines[0]["target_kw"] == pytest.approx(150.0)
    assert lines[0]["shed_kw"] == pytest.approx(60.0)
    (move,) = [line for line in lines if "moved_to" in line]
    assert move["failed"] == ["site-b"]
    assert move["moved_to"] == pytest.approx({"site-a": 60.0})
    await until(lambda: at_most(bus, "site-a", 105.0 - 60.0, 1e-6))  # site-a takes it all
    watched = [line for line in lines if "portfolio_kw" in line]
    # met from the fourth second on (the first ones: the sites shedding), site-b's part
    # counted at its last word after it stopped
    assert all(line["met"] for line in watched[3:]), watched


async def _short_site(hub: NatsServer, bus: NatsBus, stops: dict[str, asyncio.Event],
                      services: dict[str, asyncio.Task[None]]) -> None:  # fmt: skip
    page_port = free_port()
    page = await asyncio.create_subprocess_exec(
        *GRIDFLEX, "fleet", "--hub", hub.url, "serve", "--port", str(page_port),
        stdout=asyncio.subprocess.DEVNULL)  # fmt: skip
    try:
        done = await _obligation(hub, "shed", 60.0, 10)
        assert done.returncode == 0, done.stderr
        lines: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
        assert lines[0]["allocated"] == pytest.approx({"site-a": 30.0, "site-b": 30.0})
        (move,) = [line for line in lines if "moved_to" in line]
        assert move["failed"] == []
        assert move["short"] == pytest.approx({"site-b": 30.0}, abs=1.0)  # stuck at 105
        assert move["moved_to"]["site-a"] == pytest.approx(60.0, abs=1.0)
        await until(lambda: at_most(bus, "site-a", 45.0 + 1.0, 1e-6))
        status = await asyncio.to_thread(gridflex, "fleet", "--hub", hub.url, "status")
        rows = [json.loads(line) for line in status.stdout.splitlines()]
        (obligation,) = [row["portfolio"] for row in rows if "portfolio" in row]
        assert obligation["event_id"] == "p1"
        assert obligation["sites"]["site-b"]["state"] == "short"
        # the limit it was sent and keeps, not one worked back from what moved off it
        assert obligation["sites"]["site-b"]["limit_kw"] == pytest.approx(75.0, abs=1.0)
        assert obligation["sites"]["site-a"]["share_kw"] == pytest.approx(60.0, abs=1.0)
        assert {row["site"]: row["link"] for row in rows if "site" in row} == {
            "site-a": "up", "site-b": "up"}  # fmt: skip
        view = await until(lambda: _page_json(page_port))
        assert [s["site"] for s in view["sites"]] == ["site-a", "site-b"]
        assert view["portfolio"][0]["sites"]["site-b"]["state"] == "short"
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{page_port}/")
        for shown in ("shed p1", "short", "site-b"):
            assert shown in text
    finally:
        page.terminate()
        await asyncio.wait_for(page.wait(), 10)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


async def _page_json(port: int) -> dict[str, Any] | None:
    try:
        view: dict[str, Any] = json.loads(await asyncio.to_thread(
            _get, f"http://127.0.0.1:{port}/fleet.json"))  # fmt: skip
    except OSError:
        return None
    return view if view["portfolio"] else None


def _decision(price_usd_per_mwh: float | None) -> Decision:
    classes = [LoadClass("s19", Priority.INTERRUPTIBLE, 117.0),
               LoadClass("cooling", Priority.FLEXIBLE, float("inf"), follows="s19"),
               LoadClass("batch", Priority.FLEXIBLE, 400.0),
               LoadClass("inference", Priority.PROTECTED, 1500.0),
               LoadClass("controls", Priority.CRITICAL, float("inf"))]  # fmt: skip
    on_off = ControlMode.ON_OFF
    devices = [*(DeviceSpec(f"m{i}", "s19", DeviceKind.MINER, 3.0, 0.0, on_off)
                 for i in range(10)),
               DeviceSpec("f", "cooling", DeviceKind.COOLING, 3.0, 0.0, on_off),
               DeviceSpec("b", "batch", DeviceKind.OTHER, 20.0, 0.0, on_off),
               DeviceSpec("g", "inference", DeviceKind.GPU, 40.0, 0.0, on_off),
               DeviceSpec("c", "controls", DeviceKind.OTHER, 5.0, 0.0, on_off)]  # fmt: skip
    fleet = Fleet.build(classes, devices)
    signal = None if price_usd_per_mwh is None else price(price_usd_per_mwh)
    return decide(Signals(price=signal), FleetState.all_available(fleet), Policy(),
                  Memory.initial(fleet), T0)  # fmt: skip


@pytest.mark.parametrize(("usd_per_mwh", "steps"), [
    # the miners' cooling counted with them; protected and critical load never offered
    (30.0, [(87.0, 33.0), (370.0, 20.0)]),  # what a MWh earns over the price
    (None, [(117.0, 33.0), (400.0, 20.0)]),  # no price: the whole value
])  # fmt: skip
def test_a_site_offers_its_flexible_load_by_what_a_mwh_of_it_earns(
    usd_per_mwh: float | None, steps: list[tuple[float, float]]
) -> None:
    offer = [(s.value_usd_per_mwh, s.kw) for s in flex_offer(_decision(usd_per_mwh))]
    assert offer == steps

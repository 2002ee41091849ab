"""A fleet on one machine for the multi-site tests: a hub, one leaf server per site (each
leaf's link to the hub through a CutLink the test cuts and heals), and each site run as
systemd runs it (`gridflex run`, a process of its own, killable); the hub's reading of what the
sites sent, complete and in order, from its inbound stream."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from adapters.transport.nats_bus import FLEET_IN_STREAM, BusAddress, NatsBus
from tests.helpers.cli import gridflex
from tests.helpers.nats_fleet import CutLink, NatsServer, fleet_site_text
from tests.helpers.service_process import start_service

__all__ = ["FleetRig", "at_most", "held", "held_since", "sent", "until"]


@dataclass
class FleetRig:
    """`values`: each site's miners' value ($/MWh), by site id."""

    root: Path
    values: dict[str, float]
    cycle_s: float = 0.25
    hub: NatsServer | None = None
    links: dict[str, CutLink] = field(default_factory=dict)
    leaves: dict[str, NatsServer] = field(default_factory=dict)
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> FleetRig:
        self.hub = NatsServer("hub", "hub", self.root / "hub").start()
        for site in self.values:
            link = self.links[site] = CutLink(self.hub.leaf_port)
            leaf = NatsServer(site, site, self.root / site, leaf_remote_port=link.port)
            self.leaves[site] = leaf.start()
        sites = [arg for site in self.values for arg in ("--site", site)]
        made = gridflex("fleet", "--hub", self.hub.url, "init", *sites)
        assert made.returncode == 0, made.stderr
        for site, value in self.values.items():
            path = self.root / f"{site}.yaml"
            path.write_text(fleet_site_text(self.root, site, self.leaves[site].url, value,
                                            self.cycle_s))  # fmt: skip
            self.services[site] = start_service(path, self.root / f"{site}.log")
        return self

    @property
    def hub_url(self) -> str:
        assert self.hub is not None
        return self.hub.url

    def kill(self, site: str) -> None:
        """The site's service dies at once (SIGKILL: nothing flushed, nothing said)."""
        self.services[site].send_signal(signal.SIGKILL)
        self.services[site].wait(timeout=10)

    def stop(self) -> None:
        for service in self.services.values():
            if service.poll() is None:
                service.terminate()
        for service in self.services.values():
            try:
                service.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.kill()
        for link in self.links.values():
            link.close()
        for server in (*self.leaves.values(), *([self.hub] if self.hub else [])):
            server.stop()

    async def hub_bus(self) -> NatsBus:
        bus = NatsBus(BusAddress(self.hub_url))
        await bus.connect()
        return bus


async def sent(bus: NatsBus, site: str, topic: str) -> list[dict[str, Any]]:
    """What `site` published on `topic` ("telemetry", "dispatch.ack") as the hub holds it."""
    stored = await bus.stream_messages(FLEET_IN_STREAM, f"gridflex.{site}.out.{topic}")
    return [json.loads(m.data) for m in stored]


async def held(bus: NatsBus, site: str) -> dict[str, Any] | None:
    """The site's last telemetry in the hub's inbound stream (None before any)."""
    data = await bus.last_message(FLEET_IN_STREAM, f"gridflex.{site}.out.telemetry")
    return None if data is None else dict(json.loads(data))


async def at_most(bus: NatsBus, site: str, kw: float, tolerance_kw: float) -> bool:
    """The site's load, as the hub last holds it, is within `tolerance_kw` of at most `kw`."""
    last = await held(bus, site)
    return last is not None and last["site_kw"] <= kw + tolerance_kw


async def held_since(bus: NatsBus, site: str, at: datetime) -> bool:
    """The hub's inbound stream holds telemetry the site wrote after `at`."""
    last = await held(bus, site)
    return last is not None and datetime.fromisoformat(last["at"]) > at


async def until(test: Callable[[], Awaitable[Any]], timeout_s: float = 30.0,
                every_s: float = 0.2) -> Any:  # fmt: skip
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := await test()):
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout_s} s"
        await asyncio.sleep(every_s)
    return found

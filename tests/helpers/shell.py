"""The shell cycle by cycle: prices, dispatch messages, acks and the simulated site's power."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import MemoryOutbox, Service, assemble
from agent.app.simsite import endpoints_for
from agent.domain.signals import PriceSignal
from agent.service.messages import DispatchAck
from tests.helpers.peers import free_port
from tests.service.site import FakeClock, site_config

RATED_KW = 48 * 3.25 + 2 * 100 + 5


def price(clock: FakeClock, usd: float) -> PriceSignal:
    start = clock.now.replace(minute=clock.now.minute // 15 * 15, second=0, microsecond=0)
    return PriceSignal(usd, start, start + timedelta(minutes=15), clock.now, source="test")


def dispatch(clock: FakeClock, event_id: str, **fields: object) -> bytes:
    message = {"event_id": event_id, "issued_at": clock.now.isoformat(), **fields}
    return json.dumps(message).encode()


def acks(outbox: MemoryOutbox, event_id: str) -> list[DispatchAck]:
    return [
        m for t, m in outbox.sent
        if t == "dispatch/ack" and isinstance(m, DispatchAck) and m.event_id == event_id
    ]  # fmt: skip


def site_power_kw(sim: SimModbusSite) -> float:
    return sum(e.power_w(c) for e in sim.endpoints for c in range(1, e.profile.channels + 1)) / 1e3


Scenario = Callable[[Service, FakeClock, SimModbusSite], Awaitable[None]]


def run_on_site(tmp_path: Path, scenario: Scenario, *, mqtt: str = "") -> None:
    """Run `scenario` on the simulated site; `mqtt`: more of the site file (its mqtt slot)."""

    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port(), mqtt=mqtt)
        async with SimModbusSite(endpoints_for(config)) as sim:
            service = assemble(config, clock=clock)
            await service.shell.poll()
            try:
                await scenario(service, clock, sim)
            finally:
                await service.close()

    asyncio.run(main())

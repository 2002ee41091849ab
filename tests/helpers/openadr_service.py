"""OpenADR through the running service: the site enrolled with a test VTN, the service running."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import MemoryOutbox, Service, assemble
from agent.app.runner import serve
from agent.cli import main as gridflex
from agent.config import OpenAdrConfig, SiteConfig
from agent.domain.signals import PriceSignal
from agent.service.messages import DispatchAck
from tests.adapters.signals.openadr_rig import Vtn
from tests.helpers.peers import free_port
from tests.service.site import site_config

CONTROLS_KW = 5.0  # no driver: counted at its rating, never simulated
FULL_KW = 48 * 3.25 + 2 * 100 + CONTROLS_KW  # 361 kW
LEVEL_2_CEILING_KW = 200.0
LEVEL_3_CEILING_KW = 120.0
VEN_NAME = "small-site"
VEN_ID = f"ven-{VEN_NAME}"  # what the test VTN assigns
TOLERANCE = 1.005  # events.verified_under: 0.5 %


def utc_now() -> datetime:
    return datetime.now(UTC)


def enrolled(tmp_path: Path, vtn: Vtn, tag: str, **more: object) -> SiteConfig:
    config = site_config(
        tmp_path / "db.sqlite3", free_port(), tag=tag, host_a="127.0.7.1", host_b="127.0.7.101"
    )
    openadr = OpenAdrConfig.model_validate(
        {
            "vtn_url": vtn.url,
            "ven_name": VEN_NAME,
            "allow_plain_http": True,
            "poll_interval_s": 0.2,  # the default (the VTN's oadrPollFreq) would make slow tests
            "simple_levels": {
                0: {"posture": "none"},
                2: {"ceiling_kw": LEVEL_2_CEILING_KW},
                3: {"ceiling_kw": LEVEL_3_CEILING_KW},
            },
            "load_control": {"meaning": "shed", "unit": "kW"},
            **more,
        }
    )
    return config.model_copy(update={"openadr": openadr})


@dataclass
class Running:
    service: Service
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def outbox(self) -> MemoryOutbox:
        assert isinstance(self.service.outbox, MemoryOutbox)
        return self.service.outbox

    def acks(self, event_id: str) -> list[DispatchAck]:
        return [
            m for t, m in self.outbox.sent
            if t == "dispatch/ack" and isinstance(m, DispatchAck) and m.event_id == event_id
        ]  # fmt: skip

    def statuses(self, event_id: str) -> list[str]:
        return [a.status for a in self.acks(event_id)]

    def site_kw(self) -> float:
        return self.service.shell.site_kw()

    async def stopped(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@contextlib.asynccontextmanager
async def service_running(config: SiteConfig) -> AsyncIterator[Running]:
    service = assemble(config, clock=utc_now)
    start = utc_now().replace(second=0, microsecond=0)
    # a cheap price: every class runs, so whatever is shed, an event shed it
    service.snapshot(PriceSignal(30.0, start, start + timedelta(hours=2), start, source="test"))
    stop = asyncio.Event()
    running = Running(service, stop, asyncio.create_task(serve(service, stop)))
    try:
        yield running
    finally:
        if not running.task.done():
            await running.stopped()


def devices_kw(sim: SimModbusSite) -> float:
    """What the simulated devices draw, plus the controls (no driver)."""
    drawn_w = sum(e.power_w(c) for e in sim.endpoints for c in range(1, e.profile.channels + 1))
    return drawn_w / 1e3 + CONTROLS_KW


def reports_sampled_after(vtn: Vtn, moment: datetime) -> list[float]:
    return [value for sampled_at, value in vtn.reports if sampled_at > moment]


def audit(db: Path) -> list[dict[str, Any]]:
    """`gridflex audit` as the site engineer runs it."""
    result = CliRunner().invoke(
        gridflex, ["audit", "--database", str(db), "--since", "1h", "--json"]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]

"""Logs and audit fit for 10,000 devices: a lost endpoint is one log line with a count, never
one per outlet, never an empty reason; availability changes and each device's change of rule or
reason are audited, and `gridflex audit --device` answers why a device was off."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import assemble
from agent.app.simsite import endpoints_for
from agent.cli import main as cli_main
from tests.helpers.peers import free_port
from tests.helpers.shell import price
from tests.service.site import FakeClock, site_config


def test_a_lost_endpoint_is_one_line_with_a_count_and_audited_per_device(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "db.sqlite3"

    async def main() -> None:
        clock = FakeClock()
        config = site_config(db, free_port(), outlets=48)
        sim = SimModbusSite(endpoints_for(config))
        await sim.start()
        service = assemble(config, clock=clock)
        try:
            service.snapshot(price(clock, 20.0))
            await service.shell.poll()
            await service.shell.cycle()
            clock.leap(60)
            service.snapshot(price(clock, 100.0))  # the miners go off for price at 17:01
            await service.shell.cycle()
            await sim.stop()  # every endpoint goes away
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="gridflex.shell"):
                await service.shell.poll()
                await service.shell.poll()  # still down: nothing more is logged
            lines = [r.getMessage() for r in caplog.records if r.name == "gridflex.shell"]
            pdu_lines = [line for line in lines if "pdu-" in line]
            assert len(pdu_lines) <= 2  # one per endpoint and reason, not 48
            assert any("pdu-0001..pdu-0024 unavailable (24): " in line for line in pdu_lines)
            assert all(line.split(": ", 1)[1] for line in lines)  # never an empty reason
            await service.shell.cycle()
            service.store.flush()
            rows = service.store.audit_since(clock.now.replace(hour=0))
            down = [r for r in rows if r.kind == "device-unavailable"]
            assert len(down) == 48 + 2  # every outlet and both tanks, each once
            assert all(r.detail["reason"] for r in down)
        finally:
            await service.close()

    asyncio.run(main())
    since = "2024-05-08T00:00:00+00:00"
    command = ["audit", "--database", str(db), "--since", since, "--device", "pdu-0007"]
    result = CliRunner().invoke(cli_main, command)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines
    assert all(" pdu-0007" in line for line in lines)
    # why it was off at 17:01: the price, with the rule that bound it
    off = next(line for line in lines if line.startswith("2024-05-08 17:01") and "setpoint" in line)
    assert '"rule": "economics"' in off
    assert "above the 90.00 breakeven of class miners" in off
    assert any("device-unavailable" in line for line in lines)

"""`gridflex demo` runs end to end: real prices, simulated Modbus site, the scripted dispatch."""

from __future__ import annotations

import asyncio
import io
from datetime import date

from click.testing import CliRunner
from rich.console import Console

from agent.cli import main
from agent.service.demo import DemoOptions, run_demo


def test_demo_slice_dispatch_is_verified_and_the_live_view_renders() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    options = DemoOptions(day=date(2024, 5, 8), seconds=0, live=True, from_hour=10, to_hour=13)
    summary = asyncio.run(run_demo(options, console))
    statuses = [a.status for a in summary.acks]
    assert statuses == ["accepted", "active", "completed"]
    active = summary.acks[1]
    assert active.achieved_kw is not None
    assert active.achieved_kw <= 700.0 * 1.005
    assert summary.cycles == 36
    assert summary.commands > 0
    text = out.getvalue()
    assert "price" in text
    assert "grid dispatch ercot-rrs-0508" in text
    assert "device(s) recovered" in text  # the stuck PDU was planned around, then came back


def test_demo_command_runs_without_a_terminal() -> None:
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--seconds",
            "0",
            "--day",
            "2024-08-20",
            "--no-live",
            "--from-hour",
            "10",
            "--to-hour",
            "13",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "12:00  price" in result.output  # one line an hour when not on a terminal
    assert "dispatch ercot-rrs-0508: active" in result.output

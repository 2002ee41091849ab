"""A compressed day on a fleet of ten sites (make test-slow): 50 random partitions of 1 s to
5 min while the hub moves every site's limit every 12 s (tests/helpers/fleet_day.py says how).
Done when: no command lost or applied twice, none applied after its expiry, every site under
its ceiling in >= 99 % of its samples, cut off or not, its telemetry complete, and the hub's
view of a site converged within 30 s of each heal. The figures are printed as one JSON line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fleet_day import Day, compressed_day
from tests.helpers.fleet_rig import FleetRig, sent, until
from tests.helpers.nats_fleet import nats_server_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(nats_server_binary() is None, reason="nats-server not installed"),
]

SITES = {f"site-{i:02d}": 50.0 + 10.0 * i for i in range(10)}


def test_a_compressed_day_of_partitions(tmp_path: Path) -> None:
    rig = FleetRig(tmp_path, SITES, cycle_s=0.5).start()
    try:
        figures = asyncio.run(_day(rig))
    finally:
        rig.stop()
    print(json.dumps({k: v for k, v in figures.items() if k != "per_site"}))
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=1))
    commands = figures["commands"]
    assert figures["partitions"] == 50
    assert commands["lost"] == 0, figures
    assert commands["doubled"] == 0, figures
    assert commands["applied_after_expiry"] == 0, figures
    assert commands["applied"] + commands["refused"] == commands["sent"], figures
    # a command sent with the link up, and up until its expiry, applies
    assert commands["applied_link_up"] == commands["sent_link_up"], figures
    assert figures["compliance_min"] >= 0.99, figures["per_site"]
    assert figures["compliance_cut_min"] >= 0.99, figures["per_site"]
    assert figures["max_gap_s"] <= 6.0, figures["per_site"]  # every 2 s: none lost
    assert figures["converge_s"]["max"] <= 30.0, figures


async def _day(rig: FleetRig) -> dict[str, Any]:
    bus = await rig.hub_bus()
    try:
        for site in SITES:
            await until(lambda site=site: sent(bus, site, "telemetry"), timeout_s=90)  # type: ignore[misc]
        return await compressed_day(rig, bus, Day())
    finally:
        await bus.close()

"""Physics is the judge: meters that freeze, lie about units or fall mute, and a revenue meter that
says what the site really draws.

Each case runs `gridflex run` (a process) against a real Mosquitto and the Modbus site of
tests/helpers/physics_site.py, whose physical draw is kept apart from what its meters report and
sampled every 0.1 s: 48 miners on two PDUs, 12 protected GPU servers and 8 coolers on a third,
the critical controls behind a Janitza feeder meter, and the site's revenue meter.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.peers import Broker
from tests.helpers.physics_site import (
    RAMP_S,
    over_s,
    record_of,
    running,
    writes_since,
)

# -- meters that lie: the site is planned and judged on what it really draws -------------------
LIES = {
    # a miner PDU's meter frozen at its "off" values while its outlets run
    "frozen at off": lambda s: s.pdu_a.freeze_meter(0.0),
    # the same PDU now sends kW where its profile says W
    "PDU in kW": lambda s: setattr(s.pdu_a, "meter_scale", 0.001),
    # the Janitza feeder meter of the critical controls sends kW where its profile says W
    "feeder in kW": lambda s: setattr(s.controls, "meter_scale", 0.001),
}
FAST = {("frozen at off", True), ("PDU in kW", False), ("feeder in kW", True)}


# each lie with and without a site meter; three of the six in `make test`, all in test-slow
CASES = [
    pytest.param(lie, with_meter, id=f"{lie}-{'site meter' if with_meter else 'no site meter'}",
                 marks=() if (lie, with_meter) in FAST else pytest.mark.slow)
    for lie in LIES for with_meter in (True, False)
]  # fmt: skip


@pytest.mark.parametrize(("lie", "with_meter"), CASES)
def test_a_meter_that_reads_low_hides_no_violation(
    tmp_path: Path, mqtt_broker: Broker, lie: str, with_meter: bool
) -> None:
    """Under a 180 kW limit the site physically stays under it after the ramp window, the lying
    device is named, nothing protected is switched off, and the acks say what evidence judged
    it."""
    with running(tmp_path, mqtt_broker, "127.0.21", with_meter=with_meter) as run:
        run.site.do(lambda: LIES[lie](run.site))
        suspect = "controls" if lie == "feeder in kW" else "miner-0001"
        run.telemetry(lambda t: suspect in t["suspect"])
        sent_s = run.dispatch("lie-1", 180.0, lasting_s=12)
        run.ack("lie-1", "accepted")
        run.ack("lie-1", "active", 15)
        done = run.ack("lie-1", "completed", 30)
        evidence = "site meter" if with_meter else "device readings"
        assert record_of(done)["judged_on"] == evidence
        assert record_of(done)["over_periods_total"] == 0
        after_ramp = run.site.since(sent_s + RAMP_S)
        assert over_s(after_ramp, 180.0) < 0.3, max(s.physical_kw for s in after_ramp)
        assert max(s.protected_off for s in run.site.samples) == 0


def test_a_meter_frozen_at_its_on_values_sheds_nothing_protected(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    """The miners switched off still 'draw' on their frozen meter: their relays say otherwise,
    the site meter agrees with the relays, and no protected outlet goes."""
    with running(tmp_path, mqtt_broker, "127.0.22") as run:
        run.site.do(run.site.pdu_a.freeze_meter)
        sent_s = run.dispatch("high-1", 120.0, lasting_s=12)
        run.ack("high-1", "active", 15)
        done = run.ack("high-1", "completed", 30)
        assert record_of(done)["judged_on"] == "site meter"
        assert max(s.protected_off for s in run.site.samples) == 0
        assert over_s(run.site.since(sent_s + RAMP_S), 120.0) < 0.3
        assert "miner-0001" in run.telemetry(lambda t: bool(t["suspect"]))["suspect"]


def test_a_mute_meter_is_planned_on_its_relays_which_are_switched_first(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    """PDU B's power registers stop answering while its relays work: its own outlets are
    switched off (they would be the last of the miners otherwise), nothing protected is."""
    with running(tmp_path, mqtt_broker, "127.0.23") as run:
        run.site.do(lambda: setattr(run.site.pdu_b, "meter_mute", True))
        run.telemetry(lambda t: "miner-0025" in t["suspect"])
        sent_s = run.dispatch("mute-1", 150.0, lasting_s=12)
        run.ack("mute-1", "active", 15)
        run.ack("mute-1", "completed", 30)
        assert writes_since(run.site.pdu_b, sent_s) > 0
        assert max(s.protected_off for s in run.site.samples) == 0
        assert over_s(run.site.since(sent_s + RAMP_S), 150.0) < 0.3

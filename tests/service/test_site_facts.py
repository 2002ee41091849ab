"""What telemetry tells an operator beside the load (agent/app/site_facts.py), cycle by cycle on
the simulated Modbus site with a stepped clock: each alarm kind appears with the time it was
first seen, keeps that time while it lasts and clears when its cause does; device counts add up
to the fleet; an override in force is listed with who set it and until when."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import Service
from agent.app.published import telemetry_message
from tests.helpers.shell import dispatch, price, run_on_site
from tests.service.site import FakeClock


def _alarms(service: Service, clock: FakeClock) -> dict[str, tuple[str, str]]:
    t = telemetry_message(service, clock.now)
    assert sum(t.device_states.values()) == t.devices_total
    return {a.kind: (a.subject, a.since.isoformat()) for a in t.alarms}


def test_alarms_with_since_when_counts_and_overrides(tmp_path: Path) -> None:
    run_on_site(tmp_path, _alarms_with_since_when_counts_and_overrides)


async def _alarms_with_since_when_counts_and_overrides(
    service: Service, clock: FakeClock, sim: SimModbusSite
) -> None:
    # no price yet: stale, first seen now, and the same "since" a minute on
    await service.shell.cycle()
    first = clock.now
    assert _alarms(service, clock)["price_stale"] == ("site", first.isoformat())
    clock.leap(60)
    await service.shell.cycle()
    assert _alarms(service, clock)["price_stale"][1] == first.isoformat()
    service.snapshot(price(clock, 30.0))
    await service.shell.cycle()
    assert "price_stale" not in _alarms(service, clock)

    # an obligation the site cannot meet: declared short at acceptance, an alarm while it lasts
    service.intake.dispatch(dispatch(clock, "deep-1", kind="limit", target_kw=1.0))
    await service.shell.cycle()
    assert _alarms(service, clock)["obligation_at_risk"][0] == "deep-1"
    service.intake.dispatch(dispatch(clock, "deep-1", kind="release"))
    clock.leap(2)
    await service.shell.cycle()
    assert "obligation_at_risk" not in _alarms(service, clock)

    # a PDU that stops answering: its outlets are down, as one alarm with their id ranges
    down_at = clock.now
    await sim.stop()
    await service.shell.poll()
    await service.shell.cycle()
    alarms = _alarms(service, clock)
    subject, since = alarms["device_down"]
    assert subject.startswith("pdu")
    assert since == down_at.isoformat()
    t = telemetry_message(service, clock.now)
    assert t.device_states["unavailable"] == t.devices_total - t.devices_available

    # a site meter that disagrees, as the shell's meter check says it
    book = service.alarms.update(clock.now, service.shell.devices, price_stale=False,
                                 meter_alarm="the site meter reads 40 kW over the devices",
                                 broker_up=False, at_risk=[])  # fmt: skip
    kinds = {a.kind: a.detail for a in book}
    assert kinds["meter"] == "the site meter reads 40 kW over the devices"
    assert "broker_down" in kinds

    # an override in force: listed with who set it and until when, gone once expired
    expires = clock.now + timedelta(minutes=30)
    service.intake.override(
        (f'{{"override_id": "ov-1", "action": "off", "class": "miners", "issued_by": "k.lee", '
         f'"issued_at": "{clock.now.isoformat()}", "expires_at": "{expires.isoformat()}"}}'
         ).encode())  # fmt: skip
    (listed,) = telemetry_message(service, clock.now).overrides
    assert (listed.override_id, listed.target, listed.issued_by) == (
        "ov-1",
        "class miners",
        "k.lee",
    )
    assert listed.expires_at == expires
    clock.leap(31 * 60)
    assert telemetry_message(service, clock.now).overrides == []

"""Compliance all the way: an event is judged on verified power every cycle until it ends, over
real simulated Modbus devices; going over and back is acked, metered and audited, and the final
ack carries the record a settlement analyst checks."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import MemoryOutbox, assemble
from agent.app.simsite import endpoints_for
from tests.helpers.peers import free_port
from tests.helpers.shell import acks, dispatch, price
from tests.service.site import FakeClock, site_config

MINUTES = 30


def _override(clock: FakeClock, action: str) -> bytes:
    message = {"override_id": "maint-7", "action": action, "class": "miners",
               "issued_by": "engineer", "issued_at": clock.now.isoformat()}  # fmt: skip
    if action != "clear":
        message["expires_at"] = (clock.now + timedelta(hours=2)).isoformat()
    return json.dumps(message).encode()


def test_an_event_held_over_its_ceiling_is_reported_non_compliant_and_completed_short(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port())
        # the site lets engineers beat the grid: the override's load stays on, declared
        policy = config.policy.model_copy(update={"overrides_may_exceed_grid": True})
        config = config.model_copy(update={"policy": policy})
        async with SimModbusSite(endpoints_for(config)):
            outbox = MemoryOutbox()
            service = assemble(config, clock=clock, outbox=outbox)
            try:
                service.snapshot(price(clock, 30.0))
                await service.shell.poll()
                await service.shell.cycle()
                end = (clock.now + timedelta(minutes=MINUTES)).isoformat()
                event = dispatch(clock, "ev-c", kind="limit", target_kw=150.0, end=end)
                assert service.intake.dispatch(event) == "accepted"
                for _ in range(3):
                    await service.shell.cycle()
                    clock.leap(60)
                assert acks(outbox, "ev-c")[-1].status == "active"

                assert service.intake.override(_override(clock, "on")) == "accepted"
                for _ in range(5):
                    await service.shell.cycle()
                    clock.leap(60)
                over = acks(outbox, "ev-c")[-1]
                assert over.status == "non_compliant"
                assert "over the 150.0 kW ceiling" in over.reason
                assert "override maint-7 holds 156 kW on" in over.reason
                assert service.metrics.events_went_non_compliant._value.get() == 1

                assert service.intake.override(_override(clock, "clear")) == "cleared"
                await service.shell.cycle()
                back = acks(outbox, "ev-c")[-1]
                assert back.status == "active"
                assert "back under the ceiling" in back.reason

                clock.leap(MINUTES * 60)
                service.snapshot(price(clock, 30.0))
                await service.shell.cycle()
                final = acks(outbox, "ev-c")[-1]
                assert final.status == "completed"
                assert "with a shortfall" in final.reason
                record = final.compliance
                assert record is not None
                assert record.cycles == 9
                assert record.compliant_cycles == 4  # 3 before the override, 1 after the clear
                # 48 outlets held on (156 kW) and the controls (5 kW) against 150 kW: the tanks
                # went off, 11 kW could not be cut
                assert record.worst_over_kw == pytest.approx(11.0)
                assert record.worst_at is not None
                assert record.baseline_kw == pytest.approx(361.0)
                assert 0 < record.delivered_kwh < record.asked_kwh
                statuses = [a.status for a in acks(outbox, "ev-c")]
                assert statuses == ["accepted", "active", "non_compliant", "active", "completed"]
                service.store.flush()  # the writer thread has committed what the cycles wrote
                kinds = [r.kind for r in service.store.audit_since(clock.now - timedelta(days=1))
                         if r.subject == "ev-c"]  # fmt: skip
                assert "event-non_compliant" in kinds
                stored = service.store.event("ev-c")
                assert stored is not None
                assert stored.compliance == final_record(stored)
            finally:
                await service.close()

    asyncio.run(main())


def final_record(stored: object) -> object:
    """The stored record survives a round trip through the database unchanged."""
    from agent.service.store import EventRecord

    assert isinstance(stored, EventRecord)
    return EventRecord.from_json(stored.to_json()).compliance


def test_an_event_that_stays_under_its_ceiling_completes_with_every_cycle_compliant(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port())
        async with SimModbusSite(endpoints_for(config)):
            outbox = MemoryOutbox()
            service = assemble(config, clock=clock, outbox=outbox)
            try:
                service.snapshot(price(clock, 30.0))
                await service.shell.poll()
                await service.shell.cycle()
                end = (clock.now + timedelta(minutes=10)).isoformat()
                event = dispatch(clock, "ev-ok", kind="shed", shed_kw=100.0, end=end)
                assert service.intake.dispatch(event) == "accepted"
                for _ in range(10):
                    await service.shell.cycle()
                    clock.leap(60)
                clock.leap(60)
                await service.shell.cycle()
                final = acks(outbox, "ev-ok")[-1]
                assert final.status == "completed"
                assert "shortfall" not in final.reason
                assert final.compliance is not None
                assert final.compliance.compliant_cycles == final.compliance.cycles == 10
                # 100 kW below a 361 kW baseline for the 9 minutes between the first and last
                assert final.compliance.asked_kwh == pytest.approx(100.0 * 9 / 60)
                assert final.compliance.delivered_kwh >= final.compliance.asked_kwh - 0.5
            finally:
                await service.close()

    asyncio.run(main())

"""Start-up without a shed: a cold start and a restart mid-day switch nothing, over real
simulated Modbus devices, with the stale posture the shipped examples use."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from adapters.sim.modbus_server import SimModbusSite
from agent.app.assembly import MemoryOutbox, assemble
from agent.app.simsite import endpoints_for
from agent.config import SiteConfig, parse_config
from agent.domain.settings import StalePosture
from agent.domain.signals import GpuDemand, Obligation, ObligationKind
from agent.service.messages import OverrideAck
from tests.helpers.hybrid_site import HYBRID
from tests.helpers.peers import free_port
from tests.helpers.shell import price
from tests.service.site import FakeClock, site_config


def _curtailing(config: SiteConfig) -> SiteConfig:
    policy = config.policy.model_copy(
        update={"stale_posture": StalePosture.CURTAIL_INTERRUPTIBLE, "price_stale_after_s": 1800}
    )
    return config.model_copy(update={"policy": policy})


def _relays(sim: SimModbusSite) -> list[tuple[bool, float]]:
    return [
        (e.is_on(c), e.power_w(c)) for e in sim.endpoints for c in range(1, e.profile.channels + 1)
    ]


def test_a_cold_start_without_a_price_switches_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = _curtailing(site_config(tmp_path / "db.sqlite3", free_port()))
        async with SimModbusSite(endpoints_for(config)) as sim:
            before = _relays(sim)
            service = assemble(config, clock=clock)
            try:
                await service.shell.poll()
                for _ in range(5):  # 10 s of cycles before any price arrives
                    report = await service.shell.cycle()
                    assert _relays(sim) == before
                    clock.leap(2)
                assert "starting up" in report.decision.setpoint("pdu-0001").reason
                service.snapshot(price(clock, 20.0))  # a cheap price: everything keeps running
                await service.shell.cycle()
                assert _relays(sim) == before
            finally:
                await service.close()

    asyncio.run(main())


def test_a_restart_mid_day_switches_no_device(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = _curtailing(site_config(tmp_path / "db.sqlite3", free_port()))
        async with SimModbusSite(endpoints_for(config)) as sim:
            first = assemble(config, clock=clock)
            await first.shell.poll()
            first.snapshot(price(clock, 100.0))  # miners (90 $/MWh) off, tanks (120) run
            await first.shell.cycle()
            running = _relays(sim)
            assert any(not on for on, _ in running)  # the miners are off
            assert any(on for on, _ in running)
            await first.close()  # as after kill -9: no shutdown posture ran

            clock.leap(45)
            second = assemble(config, clock=clock)
            try:
                await second.shell.poll()
                for _ in range(30):  # a minute of cycles on the persisted price, none new
                    report = await second.shell.cycle()
                    assert _relays(sim) == running
                    clock.leap(2)
                assert report.decision.price_usd_per_mwh == 100.0
                assert not report.decision.price_stale
            finally:
                await second.close()

    asyncio.run(main())


def test_what_became_of_an_override_is_acked_and_audited(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = site_config(tmp_path / "db.sqlite3", free_port())
        async with SimModbusSite(endpoints_for(config)):
            outbox = MemoryOutbox()
            service = assemble(config, clock=clock, outbox=outbox)
            try:
                service.snapshot(price(clock, 20.0))
                message = (
                    '{"override_id": "keep-controls-off", "action": "off", "class": "controls",'
                    f' "expires_at": "{clock.now.replace(hour=23).isoformat()}",'
                    f' "issued_by": "engineer", "issued_at": "{clock.now.isoformat()}"}}'
                )
                assert service.intake.override(message.encode()) == "accepted"
                await service.shell.cycle()
                await service.shell.cycle()  # told once, not every cycle
                told = [m for t, m in outbox.sent
                        if t == "override/ack" and isinstance(m, OverrideAck)]  # fmt: skip
                assert [m.status for m in told] == ["accepted", "not_applied"]
                assert "critical load" in told[-1].reason
                service.store.flush()
                rows = service.store.audit_since(clock.now.replace(hour=0))
                assert any(r.kind == "override-not_applied" for r in rows)
                clock.leap(7 * 3600)  # past its expiry
                await service.shell.cycle()
                assert told[-1].status != "expired"
                expired = [m for t, m in outbox.sent
                           if isinstance(m, OverrideAck) and m.status == "expired"]  # fmt: skip
                assert [m.override_id for m in expired] == ["keep-controls-off"]
            finally:
                await service.close()

    asyncio.run(main())


def test_a_restart_keeps_a_pools_flex_tier_clock_and_a_bad_one_loses_nothing_else(
    tmp_path: Path,
) -> None:
    """A pool capped by a dispatch keeps its flex-tier clock across a restart (a fresh tier
    mid-event would give up more than declared); a clock stored corrupt is quarantined and the
    service still starts."""
    db = tmp_path / "db.sqlite3"
    text = HYBRID.format(db=db, a="http://127.0.0.1:9/metrics", b="http://127.0.0.1:9/m")
    config = parse_config(text, env={})

    async def main() -> None:
        clock = FakeClock()
        first = assemble(config, clock=clock)
        now = clock()
        first.snapshot(price(clock, 30.0))
        first.snapshot(GpuDemand("chat", now, 40.0, 120.0, None, None, 2, 2))
        limit = Obligation(
            "ev-1", ObligationKind.LIMIT, 5.0, now, now + timedelta(hours=1), program="ERS"
        )  # an emergency program: protected load may give way
        first.events.revise(limit, now, None, "a limit")  # an event of the book
        await first.shell.poll()
        report = await first.shell.cycle()
        (pool,) = report.decision.pools
        assert pool.capped > 0
        since = first.shell.memory.pool_capped_since_s
        assert since == {"chat": now.timestamp()}
        await first.close()

        clock.leap(30)
        second = assemble(config, clock=clock)
        assert second.shell.memory.pool_capped_since_s == since
        assert second.shell.memory.pool_serving == {"chat": pool.serving}
        second.store.save_state("engine", {"pool_capped_since_s": {"chat": "soon"}})
        await second.close()

        third = assemble(config, clock=clock)  # starts, without the engine's memory
        assert third.shell.memory.pool_capped_since_s == {}
        await third.close()

    asyncio.run(main())

"""The backtest and the live service decide alike: the service's Shell (snapshot store, cycle,
simulated devices that obey) fed the same prices and dispatch events, one cycle per interval,
takes the decisions the backtest's replay takes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

from adapters.sim.simulated import SimulatedDriver
from agent.backtest import replay, trace_of
from agent.backtest.replay import Intervals
from agent.config.drivers import SimulatedDriverConfig
from agent.domain.signals import Obligation, ObligationKind, PriceSignal
from agent.policy import Decision, Rule
from agent.service.cycle import FixedObligations, Shell, ShellSettings
from agent.service.snapshot import SnapshotStore
from tests.backtest.helpers import assert_same_decisions, example, local_slice, year_2024


def _at(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def _live(
    shell: Shell,
    store: SnapshotStore,
    clock: _Clock,
    intervals: Intervals,
    events: list[Obligation],
) -> list[Decision]:
    decisions = []
    pending = sorted(events, key=lambda e: e.start_utc)
    held = FixedObligations()
    shell.obligations = held
    for i in range(len(intervals)):
        clock.now = _at(int(intervals.start_ns[i]))
        while pending and pending[0].start_utc <= clock.now:
            held.held.append(pending.pop(0))  # a dispatch arrives when it starts
        store(
            PriceSignal(
                price_usd_per_mwh=float(intervals.price_usd_per_mwh[i]),
                interval_start_utc=clock.now,
                interval_end_utc=_at(int(intervals.end_ns[i])),
                observed_at_utc=clock.now,
                source="test",
            )
        )
        report = await shell.cycle()
        assert not report.failed
        decisions.append(report.decision)
    return decisions


def test_live_shell_and_backtest_take_identical_decisions() -> None:
    config = example("small-site.yaml")
    fleet, policy = config.fleet(), config.decision_policy()
    intervals = local_slice(year_2024(), "2024-05-07", "2024-05-10")
    site_kw = float(fleet.rated_kw.sum())
    events = [
        Obligation("shed-1", ObligationKind.SHED, 0.45 * site_kw,
                   datetime(2024, 5, 7, 19, tzinfo=UTC), datetime(2024, 5, 7, 21, tzinfo=UTC)),
        Obligation("limit-1", ObligationKind.LIMIT, 0.3 * site_kw,
                   datetime(2024, 5, 9, 14, tzinfo=UTC), datetime(2024, 5, 9, 16, tzinfo=UTC)),
    ]  # fmt: skip
    clock = _Clock()
    drivers = {
        d: SimulatedDriver(d, SimulatedDriverConfig(type="simulated"),
                           rated_kw=float(fleet.rated_kw[i]), clock=clock)
        for i, d in enumerate(fleet.device_ids)
    }  # fmt: skip
    store = SnapshotStore()
    # every device released at once: no staggered restore, so the devices follow decide()
    settings = ShellSettings(restore_batch_size=len(fleet), restore_batch_interval_s=0.0)
    shell = Shell(fleet, policy, drivers, store, clock=clock, settings=settings)
    live = trace_of(asyncio.run(_live(shell, store, clock, intervals, events)))
    backtest = replay(fleet, policy, intervals, [replace(e, source="test") for e in events])
    assert_same_decisions(live, backtest)
    assert (backtest.class_rule == int(Rule.DISPATCH)).any()
    assert (backtest.class_rule == int(Rule.ECONOMICS)).any()
    assert backtest.site_kw.min() < 0.5 * site_kw

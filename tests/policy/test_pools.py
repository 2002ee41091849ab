"""Hybrid sites in decide(): inference pools sized from demand, idle servers lent or paused, and
the order in which a ceiling takes power (scenario tables, then properties)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.domain.fleet import (
    ControlMode,
    DeviceKind,
    DeviceSpec,
    Fleet,
    FleetState,
    LoadClass,
    Priority,
)
from agent.domain.hybrid import FlexTier, InferencePool
from agent.domain.settings import Policy
from agent.domain.signals import GpuDemand, Obligation, ObligationKind, Signals
from agent.policy import Decision, Memory, PoolStatus, Rule, decide
from agent.policy.decision import PoolTrend
from tests.policy.site import T0, price

# 10 miners of 3.5 kW (on/off), 10 GPU servers of 1.2 kW (capped down to 0.4, 0.1 idle), 1 kW
# controls: 48 kW with everything on.
CLASSES = [
    LoadClass("asic", Priority.INTERRUPTIBLE, 60.0),
    LoadClass("gpu", Priority.PROTECTED, 1500.0),
    LoadClass("controls", Priority.CRITICAL, float("inf")),
]
ON_OFF, LIMIT = ControlMode.ON_OFF, ControlMode.POWER_LIMIT
FLEET = Fleet.build(CLASSES, [
    *(DeviceSpec(f"a{i}", "asic", DeviceKind.MINER, 3.5, 0.0, ON_OFF) for i in range(10)),
    *(DeviceSpec(f"g{i}", "gpu", DeviceKind.GPU, 1.2, 0.4, LIMIT, idle_kw=0.1) for i in range(10)),
    DeviceSpec("c", "controls", DeviceKind.OTHER, 1.0, 0.0, ON_OFF),
])  # fmt: skip
POOL = InferencePool(
    "llm", "gpu", requests_per_server=8, service_level_s=2.0, headroom_fraction=0.25,
    flex_tiers=(FlexTier(0.30, 1800), FlexTier(0.25, 3 * 3600)), lend_value_usd_per_mwh=200.0,
)  # fmt: skip
POLICY = Policy(pools=(POOL,))
WARM = replace(POOL, warmup_s=120.0)  # a server takes 2 minutes to load its model
GPUS = [f"g{i}" for i in range(10)]
ASICS = [f"a{i}" for i in range(10)]


def demand(running: float, waiting: float = 0.0, *, age_s: float = 0.0,
           queue_time_s: float | None = None, up: int = 2) -> GpuDemand:  # fmt: skip
    return GpuDemand("llm", T0 - timedelta(seconds=age_s), waiting, running, None, queue_time_s,
                     endpoints_up=up, endpoints_total=2)  # fmt: skip


def limit(kw: float, *, minutes_ago: float = 1) -> Obligation:
    return Obligation("ev-1", ObligationKind.LIMIT, kw, T0 - timedelta(minutes=minutes_ago),
                      program="ERS")  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    signals: Signals
    serving: int
    lent: int
    paused: int
    policy: Policy = POLICY
    memory: dict[str, object] = field(default_factory=dict)
    capped: int = 0
    within_flex: bool = True
    site_kw: float | None = None
    asics_on: int | None = None
    reason_has: tuple[str, ...] = ()
    gpu_reason_has: dict[str, str] = field(default_factory=dict)


def run(case: Case) -> tuple[Decision, PoolStatus]:
    memory = replace(Memory.initial(FLEET), **case.memory)  # type: ignore[arg-type]
    decision = decide(case.signals, FleetState.all_available(FLEET), case.policy, memory, T0)
    (status,) = decision.pools
    return decision, status


CHEAP, DEAR = price(30), price(300)
CASES = [
    Case("24 requests at 8 a server with 25 % headroom need 4 servers; the rest are lent",
         Signals(price=CHEAP, gpu_demand=(demand(20, 4),)), serving=4, lent=6, paused=0,
         site_kw=48, reason_has=("24 requests running and waiting need 4 servers",),
         gpu_reason_has={"g9": "lent to flexible work (price 30.00"}),
    Case("above the value of flexible work the idle servers pause (miners stop on price too)",
         Signals(price=DEAR, gpu_demand=(demand(20, 4),)), serving=4, lent=0, paused=6,
         site_kw=4 * 1.2 + 6 * 0.1 + 1, asics_on=0,
         gpu_reason_has={"g9": "paused (price 300.00 $/MWh above the 200.00 value"}),
    Case("a burst reclaims every lent server",
         Signals(price=CHEAP, gpu_demand=(demand(60, 10),)), serving=10, lent=0, paused=0),
    Case("an endpoint down: the others' demand stands for it too",
         Signals(price=CHEAP, gpu_demand=(demand(10, 2, up=1),)), serving=4, lent=6, paused=0),
    Case("stale demand: every server serves",
         Signals(price=CHEAP, gpu_demand=(demand(1, age_s=60),)), serving=10, lent=0, paused=0,
         reason_has=("demand 60 s old: every server serves",)),
    Case("no demand yet: every server serves",
         Signals(price=CHEAP), serving=10, lent=0, paused=0),
    Case("a stale price lends nothing",
         Signals(price=price(30, T0 - timedelta(hours=2)), gpu_demand=(demand(8),)),
         serving=2, lent=0, paused=8,
         gpu_reason_has={"g9": "price stale: flexible work is not lent servers"}),
    Case("queue time above target grows the pool from what served last time",
         Signals(price=CHEAP, gpu_demand=(demand(8, queue_time_s=5.0),)), serving=6, lent=4,
         paused=0, memory={"pool_serving": {"llm": 5}},
         reason_has=("queue time 5.00 s above its 2 s target: growing to 6",)),
    Case("a pool held to a time to first token grows on it, not on queue time",
         Signals(price=CHEAP, gpu_demand=(replace(demand(8, queue_time_s=0.1), ttft_s=3.0),)),
         serving=6, lent=4, paused=0, memory={"pool_serving": {"llm": 5}},
         policy=replace(POLICY, pools=(replace(POOL, service_level="ttft"),)),
         reason_has=("time to first token 3.00 s above its 2 s target: growing to 6",)),
    Case("and a queue time over its target does not move it",
         Signals(price=CHEAP, gpu_demand=(demand(8, queue_time_s=9.0),)),
         serving=4, lent=6, paused=0, memory={"pool_serving": {"llm": 5}},
         policy=replace(POLICY, pools=(replace(POOL, service_level="ttft"),))),
    Case("a falling demand shrinks the pool by at most 1 % (one server here) a decision",
         Signals(price=CHEAP, gpu_demand=(demand(4),)), serving=8, lent=2, paused=0,
         memory={"pool_serving": {"llm": 9}}, reason_has=("shrinking from 9",)),
    Case("the import limit binds: miners are curtailed, inference and lent work are not",
         Signals(price=CHEAP, gpu_demand=(demand(20, 4),)), serving=4, lent=6, paused=0,
         policy=replace(POLICY, import_limit_kw=45.0), asics_on=9, site_kw=44.5),
    Case("under a dispatch the cheapest MWh goes first: $60 miners before $200 lent GPU work",
         Signals(price=CHEAP, gpu_demand=(demand(20, 4),), obligations=(limit(38),)),
         serving=4, lent=6, paused=0, asics_on=7, site_kw=4.8 + 7.2 + 24.5 + 1,
         gpu_reason_has={"a0": "asic worth $60/MWh"}),
    Case("lent GPU work worth less than the miners is paused first, then miners",
         Signals(price=CHEAP, gpu_demand=(demand(20, 4),), obligations=(limit(38),)),
         serving=4, lent=0, paused=6, asics_on=9, site_kw=4.8 + 0.6 + 31.5 + 1,
         policy=replace(POLICY, pools=(replace(POOL, lend_value_usd_per_mwh=40.0),)),
         gpu_reason_has={"g9": "flexible GPU work of pool llm worth $40/MWh paused"}),
    Case("past every miner, inference is capped within its 30 % flex tier",
         Signals(price=CHEAP, gpu_demand=(demand(60, 10),), obligations=(limit(10),)),
         serving=10, lent=0, paused=0, capped=10, asics_on=0, site_kw=10.0,
         reason_has=("10 serving capped by the site ceiling, 3 kW within its flex tier",),
         gpu_reason_has={"g0": "capped within its flex tier (30% of its power)"}),
    Case("and beyond the tier only when that is not enough, saying so",
         Signals(price=CHEAP, gpu_demand=(demand(60, 10),), obligations=(limit(8),)),
         serving=10, lent=0, paused=0, capped=10, within_flex=False, site_kw=8.0,
         reason_has=("beyond its flex tier",),
         gpu_reason_has={"g0": "beyond the flex tier of pool llm"}),
    Case("after 30 min capped the 30 % tier is spent: 9.5 kW would be within 30 %, not 25 %",
         Signals(price=CHEAP, gpu_demand=(demand(60, 10),), obligations=(limit(9.5),)),
         serving=10, lent=0, paused=0, capped=10, within_flex=False, site_kw=9.5,
         memory={"pool_capped_since_s": {"llm": T0.timestamp() - 2000}},
         gpu_reason_has={"g0": "beyond the flex tier"}),
    Case("after 3 h no tier is open: a cap is beyond flex at once",
         Signals(price=CHEAP, gpu_demand=(demand(60, 10),), obligations=(limit(12.5),)),
         serving=10, lent=0, paused=0, capped=10, within_flex=False, site_kw=12.5,
         memory={"pool_capped_since_s": {"llm": T0.timestamp() - 4 * 3600}}),
    # square-root staffing, warm-up and trend (docs/hybrid.md)
    Case("square-root staffing: 32 requests are 4 servers, plus 2 x sqrt(4) spare",
         Signals(price=CHEAP, gpu_demand=(demand(32),)), serving=8, lent=2, paused=0,
         policy=replace(POLICY, pools=(replace(POOL, headroom_fraction=0.0, spare_sqrt=2.0),)),
         reason_has=("need 8 servers (8 each, 0% headroom, 2 x sqrt spare)",)),
    Case("a rising demand is met where it will be a warm-up from now: 24 now, ~31.7 in 120 s",
         Signals(price=CHEAP, gpu_demand=(demand(24),)), serving=5, lent=5, paused=0,
         policy=replace(POLICY, pools=(WARM,)),
         memory={"pool_trend": {"llm": PoolTrend(T0.timestamp() - 60, 16.0, 0.05)}},
         reason_has=("rising 3.8 a minute: sized for 32 in the 120 s",)),
    Case("without the trend the same 24 requests need 4",
         Signals(price=CHEAP, gpu_demand=(demand(24),)), serving=4, lent=6, paused=0,
         policy=replace(POLICY, pools=(WARM,))),
    Case("a queue that grows while running stays flat is no trend (the pool is short)",
         Signals(price=CHEAP, gpu_demand=(demand(16, 8),)), serving=4, lent=6, paused=0,
         policy=replace(POLICY, pools=(WARM,)),
         memory={"pool_trend": {"llm": PoolTrend(T0.timestamp() - 60, 16.0, 0.0)}}),
    Case("a missed service level grows the pool once per warm-up, and holds it meanwhile",
         Signals(price=CHEAP, gpu_demand=(demand(8, queue_time_s=5.0),)), serving=5, lent=5,
         paused=0, policy=replace(POLICY, pools=(WARM,)),
         memory={"pool_serving": {"llm": 5}, "pool_trend": {"llm": PoolTrend(
             T0.timestamp() - 60, 8.0, 0.0, grown_at_s=T0.timestamp() - 60)}},
         reason_has=("holding 5 while the servers it grew by warm up",)),
    Case("and grows again once the warm-up has passed",
         Signals(price=CHEAP, gpu_demand=(demand(8, queue_time_s=5.0),)), serving=6, lent=4,
         paused=0, policy=replace(POLICY, pools=(WARM,)),
         memory={"pool_serving": {"llm": 5}, "pool_trend": {"llm": PoolTrend(
             T0.timestamp() - 60, 8.0, 0.0, grown_at_s=T0.timestamp() - 180)}},
         reason_has=("growing to 6",)),
    # a cap priced by the throughput it costs (30 % less power keeps 0.7 ** 0.3 = 89.9 % of it:
    # $1,500 x 0.1015 / 0.3 = $507 a MWh given up) competes with lent work worth $1,000
    Case("a priced cap comes before lent work worth more: miners, then caps, lent work kept",
         Signals(price=CHEAP, gpu_demand=(demand(20, 4),), obligations=(limit(12.5),)),
         serving=4, lent=6, paused=0, capped=4, asics_on=0, site_kw=12.5,
         policy=replace(POLICY, pools=(replace(POOL, lend_value_usd_per_mwh=1000.0,
                                               power_speed_exponent=0.3),)),
         gpu_reason_has={"g0": "costing $507/MWh of inference", "g9": "lent to flexible work"}),
    Case("unpriced, the same cut is taken from the lent work (turned down), inference uncapped",
         Signals(price=CHEAP, gpu_demand=(demand(20, 4),), obligations=(limit(12.5),)),
         serving=4, lent=6, paused=0, capped=0, asics_on=0, site_kw=12.5,
         policy=replace(POLICY, pools=(replace(POOL, lend_value_usd_per_mwh=1000.0),)),
         gpu_reason_has={"g9": "flexible GPU work of pool llm worth $1,000/MWh paused"}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_pool_table(case: Case) -> None:
    decision, status = run(case)
    assert (status.serving, status.lent, status.paused) == (case.serving, case.lent, case.paused)
    assert status.capped == case.capped
    assert status.within_flex is case.within_flex
    if case.site_kw is not None:
        assert decision.site_kw == pytest.approx(case.site_kw)
    if case.asics_on is not None:
        assert sum(decision.setpoint(a).on for a in ASICS) == case.asics_on
    for text in case.reason_has:
        assert text in status.reason
    for device_id, text in case.gpu_reason_has.items():
        assert text in decision.setpoint(device_id).reason


def test_the_flex_tier_clock_starts_when_a_ceiling_first_caps_the_pool_and_stops_with_it() -> None:
    signals = Signals(price=CHEAP, gpu_demand=(demand(60, 10),), obligations=(limit(10),))
    first = decide(signals, FleetState.all_available(FLEET), POLICY, Memory.initial(FLEET), T0)
    assert first.memory.pool_capped_since_s == {"llm": T0.timestamp()}
    later = decide(signals, FleetState.all_available(FLEET), POLICY, first.memory,
                   T0 + timedelta(minutes=10))  # fmt: skip
    assert later.memory.pool_capped_since_s == {"llm": T0.timestamp()}
    free = replace(signals, obligations=())
    after = decide(free, FleetState.all_available(FLEET), POLICY, later.memory,
                   T0 + timedelta(minutes=20))  # fmt: skip
    assert after.memory.pool_capped_since_s == {}


def test_a_pool_server_the_dispatch_paused_is_reported_paused_with_the_dispatch_rule() -> None:
    (case,) = [c for c in CASES if c.name.startswith("lent GPU work worth less")]
    decision, status = run(case)
    assert decision.setpoint("g9").rule is Rule.DISPATCH
    assert status.needed == 4


# -- properties ------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    running=st.floats(0, 120), waiting=st.floats(0, 40), usd=st.floats(-20, 400),
    ceiling_kw=st.one_of(st.none(), st.floats(0, 50)), capped_for_s=st.floats(0, 5 * 3600),
)  # fmt: skip
def test_a_ceiling_takes_lent_work_then_miners_then_inference_within_flex_then_beyond(
    running: float, waiting: float, usd: float, ceiling_kw: float | None, capped_for_s: float
) -> None:
    obligations = () if ceiling_kw is None else (limit(ceiling_kw),)
    signals = Signals(price=price(usd), gpu_demand=(demand(running, waiting),),
                      obligations=obligations)  # fmt: skip
    memory = replace(Memory.initial(FLEET),
                     pool_capped_since_s={"llm": T0.timestamp() - capped_for_s})  # fmt: skip
    decision = decide(signals, FleetState.all_available(FLEET), POLICY, memory, T0)
    (status,) = decision.pools
    sp = decision.setpoint_kw
    gpus = np.array([FLEET.index_of[g] for g in GPUS])
    asics = np.array([FLEET.index_of[a] for a in ASICS])
    assert status.serving + status.lent + status.paused == 10
    serving_kw = sp[gpus][: status.serving]
    if status.capped:
        assert status.lent == 0  # lent work gave way first
        assert not sp[asics].any()  # and then every miner
    if not status.within_flex:
        open_tier = POOL.give_up_allowed(capped_for_s)
        floor = 1.2 * (1 - open_tier)
        # beyond the tier only when every serving server was already down to it
        assert open_tier == 0 or (serving_kw <= floor + 1e-6).all()
    if ceiling_kw is not None and ceiling_kw >= 1.0 + 10 * 0.1 + status.serving * 0.4:
        assert decision.shortfall_kw <= 1e-6


@settings(max_examples=100, deadline=None)
@given(load=st.floats(0, 100), more=st.floats(0, 50))
def test_more_demand_never_serves_on_fewer_servers(load: float, more: float) -> None:
    def serving(requests: float) -> int:
        signals = Signals(price=CHEAP, gpu_demand=(demand(requests),))
        decision = decide(signals, FleetState.all_available(FLEET), POLICY,
                          Memory.initial(FLEET), T0)  # fmt: skip
        return decision.pools[0].serving

    assert serving(load + more) >= serving(load)

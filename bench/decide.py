"""decide() over a fleet of 100,000 devices; prints one JSON line.

Baseline in the same run: a plain Python loop that only compares each device's class value
with the price (the least any per-device decision must do), to show what vectorizing buys.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from agent.domain.fleet import (
    ControlMode,
    DeviceKind,
    DeviceSpec,
    Fleet,
    FleetState,
    LoadClass,
    Priority,
)
from agent.domain.settings import Policy
from agent.domain.signals import Obligation, ObligationKind, PriceSignal, Signals
from agent.policy import Memory, Rule, decide

DEVICES = 100_000
ROUNDS = 21
QUICK_DEVICES, QUICK_ROUNDS = 2_000, 3  # --quick: the same path, small (make test)


def build_fleet(n: int) -> Fleet:
    classes = [
        LoadClass("s19", Priority.INTERRUPTIBLE, 55.0),
        LoadClass("s21", Priority.INTERRUPTIBLE, 85.0),
        LoadClass("batch", Priority.FLEXIBLE, 120.0),
        LoadClass("inference", Priority.PROTECTED, 400.0),
        LoadClass("cooling", Priority.FLEXIBLE, 90.0, follows="s19"),
        LoadClass("controls", Priority.CRITICAL, 10_000.0),
    ]
    mix = [
        ("s19", DeviceKind.MINER, 3.2, 0.0, ControlMode.ON_OFF),
        ("s21", DeviceKind.MINER, 3.5, 1.5, ControlMode.POWER_LIMIT),
        ("batch", DeviceKind.GPU, 6.0, 2.0, ControlMode.POWER_LIMIT),
        ("inference", DeviceKind.GPU, 6.0, 2.0, ControlMode.POWER_LIMIT),
        ("cooling", DeviceKind.COOLING, 15.0, 3.0, ControlMode.PERCENT),
    ]
    devices = [
        # no dwell: every round re-plans the whole dispatch instead of holding devices off
        DeviceSpec(f"dev-{i:06d}", c, k, rated, mn, mode)
        for i in range(n - 10)
        for c, k, rated, mn, mode in [mix[i % len(mix)]]
    ]
    devices += [
        DeviceSpec(f"ctl-{i}", "controls", DeviceKind.OTHER, 5.0, 0.0, ControlMode.ON_OFF)
        for i in range(10)
    ]
    return Fleet.build(classes, devices)


def rules_used(rule: np.ndarray) -> dict[str, int]:
    codes, counts = np.unique(rule, return_counts=True)
    return {Rule(int(c)).label: int(n) for c, n in zip(codes, counts, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for make test")
    quick = parser.parse_args().quick
    devices, rounds = (QUICK_DEVICES, QUICK_ROUNDS) if quick else (DEVICES, ROUNDS)
    fleet = build_fleet(devices)
    state = FleetState.all_available(fleet)
    policy = Policy(hysteresis_usd_per_mwh=5.0)
    t0 = datetime(2024, 5, 8, 23, 0, tzinfo=UTC)
    memory = Memory.initial(fleet)
    timings_ms = []
    total_kw = float(fleet.rated_kw.sum())
    for r in range(rounds):
        now = t0 + timedelta(seconds=2 * r)
        # prices below every breakeven: all would run, so the dispatch binds every cycle and
        # decide() throttles and switches in merit order (its most expensive path)
        price = PriceSignal(20.0 + 5 * (r % 7), now, now + timedelta(minutes=15), now)
        obligation = Obligation("ev-1", ObligationKind.LIMIT, 0.6 * total_kw, t0)
        signals = Signals(price=price, obligations=(obligation,))
        start = time.perf_counter()
        decision = decide(signals, state, policy, memory, now)
        timings_ms.append(1000 * (time.perf_counter() - start))
        memory = decision.memory

    values = [fleet.classes[i].value_usd_per_mwh for i in fleet.class_index]
    baseline_ms = []
    for r in range(5):
        price_value = 20.0 + 5 * (r % 7)
        start = time.perf_counter()
        _ = [value >= price_value for value in values]
        baseline_ms.append(1000 * (time.perf_counter() - start))

    print(
        json.dumps(
            {
                "bench": "decide",
                "quick": quick,
                "devices": devices,
                "rounds": rounds,
                "median_ms": round(statistics.median(timings_ms), 2),
                "p95_ms": round(sorted(timings_ms)[int(0.95 * (rounds - 1))], 2),
                "plain_loop_compare_only_median_ms": round(statistics.median(baseline_ms), 2),
                "site_kw": round(decision.site_kw, 1),
                "ceiling_kw": round(0.6 * total_kw, 1),
                "devices_by_rule": rules_used(decision.rule),
                "target_ms": 50,
            }
        )
    )


if __name__ == "__main__":
    main()

"""A small hybrid site used by the rule tables: every priority and control mode, 67 kW in all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.domain.fleet import ControlMode, DeviceKind, DeviceSpec, Fleet, LoadClass, Priority
from agent.domain.settings import Policy
from agent.domain.signals import PriceSignal

T0 = datetime(2024, 5, 8, 18, 0, tzinfo=UTC)

CLASSES = [
    LoadClass("s19", Priority.INTERRUPTIBLE, 50.0),
    LoadClass("s21", Priority.INTERRUPTIBLE, 80.0),
    LoadClass("batch", Priority.FLEXIBLE, 150.0),
    LoadClass("inference", Priority.PROTECTED, 1500.0),
    LoadClass("controls", Priority.CRITICAL, float("inf")),
]


def _device(device_id: str, load_class: str, rated: float, minimum: float, mode: ControlMode,
            *, dwell_s: float = 0.0) -> DeviceSpec:  # fmt: skip
    kind = {"s19": DeviceKind.PDU_OUTLET, "s21": DeviceKind.MINER, "controls": DeviceKind.OTHER}
    return DeviceSpec(
        device_id, load_class, kind.get(load_class, DeviceKind.GPU), rated, minimum, mode,
        min_on_s=dwell_s, min_off_s=dwell_s,
    )  # fmt: skip


def small_fleet(dwell_s: float = 0.0) -> Fleet:
    on_off, limit = ControlMode.ON_OFF, ControlMode.POWER_LIMIT
    devices = [
        *(_device(f"m{i}", "s19", 3.0, 0.0, on_off, dwell_s=dwell_s) for i in range(1, 5)),
        *(_device(f"t{i}", "s21", 10.0, 4.0, limit, dwell_s=dwell_s) for i in range(1, 3)),
        _device("b1", "batch", 10.0, 2.0, limit, dwell_s=dwell_s),
        *(_device(f"g{i}", "inference", 10.0, 4.0, limit, dwell_s=dwell_s) for i in range(1, 3)),
        _device("c1", "controls", 5.0, 0.0, on_off, dwell_s=dwell_s),
    ]
    return Fleet.build(CLASSES, devices)


def price(usd_per_mwh: float, observed_at: datetime = T0) -> PriceSignal:
    start = observed_at.replace(minute=observed_at.minute - observed_at.minute % 15, second=0)
    return PriceSignal(usd_per_mwh, start, start + timedelta(minutes=15), observed_at)


POLICY = Policy(hysteresis_usd_per_mwh=5.0)

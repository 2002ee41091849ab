"""Ports: the small capability interfaces the core asks of the outside world.

Adapters implement these; the shell (agent.service) is the only place that wires them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd

    from agent.domain.signals import (
        EmergencySignal,
        Obligation,
        ObligationCancel,
        Override,
        PeakWarning,
        PriceSignal,
    )
    from agent.errors import DeviceError

__all__ = [
    "CANONICAL_PRICE_COLUMNS",
    "Capability",
    "Clock",
    "DeviceCommand",
    "DeviceDriver",
    "DeviceReading",
    "EndpointBatch",
    "GpuPoolScheduler",
    "PoolPlan",
    "PoolState",
    "PriceHistory",
    "SignalSink",
    "SignalSource",
    "SiteView",
    "utc_now",
]


# Every adapter and the shell take their time from a Clock, so tests can leap it.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The production clock: timezone-aware UTC."""
    return datetime.now(UTC)


class Capability(StrEnum):
    ON_OFF = "on_off"
    POWER_LIMIT = "power_limit"
    PERCENT = "percent"
    POWER_READING = "power_reading"


@dataclass(frozen=True, slots=True)
class DeviceCommand:
    """An absolute setpoint for one device (never a delta: a command may be delivered twice)."""

    device_id: str
    on: bool
    kw: float
    percent: float


@dataclass(frozen=True, slots=True)
class DeviceReading:
    device_id: str
    observed_at_utc: datetime
    power_kw: float | None = None
    running: bool | None = None  # what the device's relay or run state reads back
    # why its meter gave no power while the rest of the device answered (a mute meter): the
    # shell plans it on its relays' state, not as unreachable
    power_fault: str | None = None


@runtime_checkable
class DeviceDriver(Protocol):
    """One controllable load. Raises agent.errors.DeviceError subclasses, nothing else."""

    @property
    def device_id(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    @property
    def settle_s(self) -> float:
        """How long after a command the device's power may still be moving towards it (a relay:
        its meter's update; a miner: spinning down or ramping up). Until then a device drawing
        more than commanded is settling, not disobeying."""
        ...

    async def apply(self, command: DeviceCommand) -> DeviceReading | None:
        """Apply an absolute command; return once it holds as far as the driver can prove.

        A driver that proves a command by measuring power returns that measurement (its caller
        then needs no second read); one that proves nothing by measurement returns None.
        """
        ...

    async def read(self) -> DeviceReading: ...


class EndpointBatch(Protocol):
    """Devices that share an endpoint (a PDU's outlets), commanded and read together in a few
    requests. A driver that belongs to one has it as `batch`; verification stays per device."""

    async def apply_many(
        self, commands: Sequence[DeviceCommand]
    ) -> list[DeviceReading | DeviceError | None]:
        """Per command: the proving reading, None (nothing proven yet), or its DeviceError."""
        ...

    async def read_many(
        self, device_ids: Sequence[str], *, with_state: bool = True
    ) -> list[DeviceReading | DeviceError | None]:
        """Per device: its reading or DeviceError; `with_state=False` reads power alone (right
        after a command whose read-back proved the state)."""
        ...


# A live signal source pushes each new value into the shell's snapshot through a sink.
# An Obligation with an event_id already known replaces it (a modification);
# ObligationCancel ends one early.
SignalSink = Callable[
    ["PriceSignal | Obligation | ObligationCancel | EmergencySignal | PeakWarning | Override"],
    None,
]


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """How a GPU pool's servers are used, counted in the scheduler's workers (replicas).

    A pool's servers are in one of four states: serving inference, lent to flexible work
    (batch inference, fine-tuning, training), paused (neither: the workers stopped), or capped.
    The first three are the scheduler's (this plan); capping is a power limit on servers that
    keep serving, set through `gridflex node` (NVML), not through the scheduler."""

    serving: int
    lent: int

    def __post_init__(self) -> None:
        if self.serving < 0 or self.lent < 0:
            raise ValueError(f"a pool plan counts workers: {self.serving}, {self.lent}")


@dataclass(frozen=True, slots=True)
class PoolState:
    """What the scheduler says of a pool: workers asked for and workers running, per use."""

    serving_target: int
    serving_running: int
    lent_target: int
    lent_running: int
    observed_at_utc: datetime

    def meets(self, plan: PoolPlan) -> bool:
        """The plan is in force: exactly the planned workers run (not just asked for)."""
        serving = self.serving_target == self.serving_running == plan.serving
        return serving and self.lent_target == self.lent_running == plan.lent


class GpuPoolScheduler(Protocol):
    """The workload scheduler of one GPU pool (Ray Serve, Kueue...). Raises DeviceError
    subclasses, nothing else: the pool is treated like a device."""

    async def apply(self, plan: PoolPlan) -> None: ...

    async def read(self) -> PoolState: ...


class SiteView(Protocol):
    """What a signal adapter may ask of the running site (OpenADR reports and opt decisions)."""

    def site_kw(self) -> float:
        """The site's load now: measured where devices report it, else as last decided."""
        ...

    def floor_kw(self, *, include_protected: bool) -> float:
        """The lowest load the site can reach now by shedding interruptible and flexible loads
        (and protected ones too when `include_protected`): critical and unreachable loads stay."""
        ...

    def capacity_kw(self) -> float:
        """Every device at its rating: what a capacity fraction (OpenADR) is a fraction of."""
        ...

    def baseline_kw(self, event_id: str) -> float | None:
        """The load a live event's shed is counted from (None: none is kept for it)."""
        ...

    def online(self) -> bool:
        """The agent can act on the site now: at least one device with a driver answers."""
        ...

    def manual_override(self) -> bool:
        """An engineer's override is in force now."""
        ...


class SignalSource(Protocol):
    """A live source of signals (prices, dispatch, OpenADR). Runs until cancelled."""

    async def run(self, sink: SignalSink) -> None: ...


# The canonical price table: every ISO adapter returns exactly these columns first
# (extra ISO-specific label columns may follow).
CANONICAL_PRICE_COLUMNS = (
    "interval_start_utc",
    "interval_end_utc",
    "settlement_point",
    "market",
    "price_usd_per_mwh",
)


class PriceHistory(Protocol):
    """Historical prices of one ISO, for `gridflex prices fetch` and the backtest."""

    def fetch(
        self, market: str, settlement_point: str, start_day: date, end_day: date
    ) -> pd.DataFrame: ...

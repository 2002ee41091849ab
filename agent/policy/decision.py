"""What decide() returns: a setpoint per device with the rule that bound it and why."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from agent.domain.fleet import ControlMode, Fleet

__all__ = [
    "Decision",
    "Memory",
    "ObligationStatus",
    "OverrideStatus",
    "PoolStatus",
    "PoolTrend",
    "Rule",
    "Setpoint",
]


class Rule(IntEnum):
    """The rule that bound a setpoint, in the order the rules run (earlier ones win)."""

    SAFETY = 0  # unreachable device held, or the site import limit
    CRITICAL = 1
    OVERRIDE = 2
    DISPATCH = 3
    EMERGENCY = 4
    FOURCP = 5
    DWELL = 6
    ECONOMICS = 7
    STALE_SIGNAL = 8
    FOLLOW = 9
    RAMP = 10
    PROTECTED = 11  # protected load running untouched
    POOL = 12  # an inference pool's server not needed for its demand: lent or paused

    @property
    def label(self) -> str:
        return "4cp" if self is Rule.FOURCP else self.name.lower()


@dataclass(frozen=True, slots=True)
class PoolTrend:
    """A pool's demand as the last decision saw it, and how fast it was rising."""

    at_s: float  # POSIX seconds of that decision
    running_requests: float  # requests being served (nan: the servers do not say)
    slope_per_s: float  # of the running requests, a second, smoothed over about three warm-ups
    grown_at_s: float = -math.inf  # when a missed service level last grew the pool


@dataclass(frozen=True, eq=False)
class Memory:
    """What one decision hands to the next: enough to honour dwell, hysteresis and baselines."""

    setpoint_kw: npt.NDArray[np.float64]  # nan: never decided
    changed_at_s: npt.NDArray[np.float64]  # POSIX seconds of the last on/off change; -inf: never
    class_running: tuple[bool, ...]  # economics state per load class (for hysteresis)
    baselines_kw: Mapping[str, float] = field(default_factory=dict)  # shed events: site kW at start
    decided_at_utc: datetime | None = None
    # learned from measurements (nan: not seen yet; None: nothing learned): what each device
    # draws when commanded off, and an on/off device when on (learn.py)
    off_draw_kw: npt.NDArray[np.float64] | None = None
    on_draw_kw: npt.NDArray[np.float64] | None = None
    # while starting up without a price: the state each device had at the start (inf: free)
    startup_hold_kw: npt.NDArray[np.float64] | None = None
    # inference pools: servers serving at the last decision, and since when (POSIX s) each pool
    # has been capped below what serving asks (its flex tier's clock)
    pool_serving: Mapping[str, int] = field(default_factory=dict)
    pool_capped_since_s: Mapping[str, float] = field(default_factory=dict)
    # each pool's demand trend (not saved across restarts: it is learned again in minutes)
    pool_trend: Mapping[str, PoolTrend] = field(default_factory=dict)

    @classmethod
    def initial(cls, fleet: Fleet) -> Memory:
        n = len(fleet)
        return cls(
            setpoint_kw=np.full(n, np.nan),
            changed_at_s=np.full(n, -np.inf),
            class_running=tuple(True for _ in fleet.classes),
        )


@dataclass(frozen=True, slots=True)
class ObligationStatus:
    event_id: str
    ceiling_kw: float
    planned_kw: float
    shortfall_kw: float  # > 0 when the fleet cannot get down to the ceiling
    baseline_kw: float | None = None  # the site load drawn when it started (a shed's base)
    cause: str = ""  # why there is a shortfall, when there is one


@dataclass(frozen=True, slots=True)
class OverrideStatus:
    """What became of one active override this decision: applied, partly, or not, and why."""

    override_id: str
    status: str  # "applied" | "partial" | "not_applied"
    reason: str
    asked_kw: float  # on: the kW it asked to run; off/limit: the kW it asked to cut to
    applied_kw: float  # what its targets are planned at


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """What one inference pool's servers do this decision, and why (agent.domain.hybrid)."""

    pool: str
    needed: int  # servers its demand asks to serve
    serving: int  # servers serving (running)
    lent: int  # servers lent to flexible work (running)
    paused: int  # servers neither serving nor lent (includes lent work a ceiling paused)
    capped: int  # serving servers power-capped below rated
    give_up_kw: float  # serving power given up to a ceiling
    within_flex: bool  # what was given up is within the pool's declared flex tier
    reason: str
    serving_kw: float = 0.0  # the serving servers' setpoints
    lent_kw: float = 0.0  # the lent servers' setpoints
    load_requests: float | None = None  # the demand it was sized on (None: unknown or stale)


@dataclass(frozen=True, slots=True)
class Setpoint:
    device_id: str
    kw: float
    on: bool
    percent: float
    control_mode: ControlMode
    rule: Rule
    reason: str


@dataclass(frozen=True, eq=False)
class Decision:
    fleet: Fleet
    decided_at_utc: datetime
    setpoint_kw: npt.NDArray[np.float64]
    rule: npt.NDArray[np.int8]
    reason_index: npt.NDArray[np.int32]
    reasons: tuple[str, ...]
    site_kw: float
    class_kw: tuple[float, ...]
    site_ceiling_kw: float | None
    obligations: tuple[ObligationStatus, ...]
    price_usd_per_mwh: float | None
    price_stale: bool
    memory: Memory
    overrides: tuple[OverrideStatus, ...] = ()
    pools: tuple[PoolStatus, ...] = ()

    @property
    def shortfall_kw(self) -> float:
        if self.site_ceiling_kw is None:
            return 0.0
        return max(0.0, self.site_kw - self.site_ceiling_kw)

    def setpoint(self, device_id: str) -> Setpoint:
        return self._setpoint_at(self.fleet.index_of[device_id])

    def setpoints(self) -> Iterator[Setpoint]:
        for i in range(len(self.fleet)):
            yield self._setpoint_at(i)

    def class_kw_by_name(self) -> dict[str, float]:
        return {c.name: kw for c, kw in zip(self.fleet.classes, self.class_kw, strict=True)}

    def changed_devices(self, previous_kw: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        """Indices whose setpoint differs from `previous_kw` (nan counts as different)."""
        same = np.isclose(self.setpoint_kw, previous_kw, rtol=0.0, atol=1e-6)
        return np.flatnonzero(~same)

    def _setpoint_at(self, i: int) -> Setpoint:
        kw = float(self.setpoint_kw[i])
        rated = float(self.fleet.rated_kw[i])
        return Setpoint(
            device_id=self.fleet.device_ids[i],
            kw=kw,
            on=kw > 0.0,
            percent=100.0 * kw / rated if rated > 0 else 0.0,
            control_mode=self.fleet.modes[i],
            rule=Rule(int(self.rule[i])),
            reason=self.reasons[int(self.reason_index[i])],
        )

"""The policy decide() applies: postures, hysteresis, staleness, 4CP windows (values, no IO)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from enum import StrEnum

from agent.domain.ercot import Resource
from agent.domain.fleet import Priority
from agent.domain.hybrid import InferencePool
from agent.domain.signals import EmergencyLevel

__all__ = ["FourCpWindow", "Policy", "Posture", "StalePosture"]


class Posture(StrEnum):
    """How deep a grid condition cuts: every class up to and including the named priority stops."""

    NONE = "none"
    CURTAIL_INTERRUPTIBLE = "curtail_interruptible"
    CURTAIL_FLEXIBLE = "curtail_flexible"  # interruptible and flexible
    CURTAIL_PROTECTED = "curtail_protected"  # everything but critical loads

    @property
    def deepest_priority(self) -> Priority | None:
        return {
            Posture.NONE: None,
            Posture.CURTAIL_INTERRUPTIBLE: Priority.INTERRUPTIBLE,
            Posture.CURTAIL_FLEXIBLE: Priority.FLEXIBLE,
            Posture.CURTAIL_PROTECTED: Priority.PROTECTED,
        }[self]


class StalePosture(StrEnum):
    """What economics does when the price is missing or older than the stale timeout."""

    HOLD_LAST = "hold_last"  # keep each class as it was at the last fresh price
    CURTAIL_INTERRUPTIBLE = "curtail_interruptible"  # interruptible stops, others hold
    RUN_ALL = "run_all"  # everything runs


@dataclass(frozen=True, slots=True)
class FourCpWindow:
    """ERCOT 4CP: transmission charges follow the site's load in the four summer monthly peaks."""

    months: frozenset[int] = frozenset({6, 7, 8, 9})
    start_local: time = time(15, 0)
    end_local: time = time(19, 0)
    posture: Posture = Posture.CURTAIL_FLEXIBLE
    # "warning": curtail in the window only while a fresh 4CP peak warning is active;
    # "window": curtail in every window of the listed months.
    trigger: str = "warning"
    warning_stale_after_s: float = 3600.0
    forecast_warning_pct: float = 95.0  # the backtest's warning rule (agent.backtest.fourcp)


def _default_emergency_postures() -> Mapping[EmergencyLevel, Posture]:
    return {
        EmergencyLevel.NORMAL: Posture.NONE,
        EmergencyLevel.CONSERVATION: Posture.CURTAIL_INTERRUPTIBLE,
        EmergencyLevel.EEA1: Posture.CURTAIL_INTERRUPTIBLE,
        EmergencyLevel.EEA2: Posture.CURTAIL_FLEXIBLE,
        EmergencyLevel.EEA3: Posture.CURTAIL_FLEXIBLE,
    }


@dataclass(frozen=True, slots=True)
class Policy:
    timezone: str = "America/Chicago"
    import_limit_kw: float | None = None
    hysteresis_usd_per_mwh: float = 0.0
    price_stale_after_s: float = 1800.0
    stale_posture: StalePosture = StalePosture.HOLD_LAST
    emergency_postures: Mapping[EmergencyLevel, Posture] = field(
        default_factory=_default_emergency_postures
    )
    fourcp: FourCpWindow | None = None
    # An engineer's override beats grid obligations and emergency postures (never the import
    # limit): it then applies with a declared shortfall. Off by default: the grid comes first.
    overrides_may_exceed_grid: bool = False
    # dispatch programs whose events may cut protected load (a grid emergency); any other is
    # met without it (the import limit always may)
    protected_shed_programs: frozenset[str] = frozenset({"ERS", "RRS", "ECRS", "emergency"})
    # hybrid sites: inference pools sized from their demand, lending idle servers
    pools: tuple[InferencePool, ...] = ()
    # the site as an ERCOT Load Resource: the ramp curves base points are followed on
    resource: Resource | None = None

"""Signals the agent decides on: prices, grid obligations, emergencies, 4CP warnings, overrides.

All times are timezone-aware UTC. Each value carries when it was observed so the
decision can tell a fresh signal from a stale one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "EmergencyLevel",
    "EmergencySignal",
    "GpuDemand",
    "Obligation",
    "ObligationCancel",
    "ObligationKind",
    "Override",
    "OverrideAction",
    "PeakWarning",
    "PriceSignal",
    "Signals",
]


@dataclass(frozen=True, slots=True)
class PriceSignal:
    """One published price for one interval at one settlement point."""

    price_usd_per_mwh: float
    interval_start_utc: datetime
    interval_end_utc: datetime
    observed_at_utc: datetime
    settlement_point: str = "HB_HUBAVG"
    market: str = "rt15"  # rt15 | sced5 | dam
    source: str = "unknown"


class ObligationKind(StrEnum):
    LIMIT = "limit"  # keep the site at or below target_kw
    SHED = "shed"  # draw shed_kw less than the baseline at the event's start
    # an ERCOT SCED base point: consume base_point_kw, reached along the resource's ramp-rate
    # curve from the load at the event's start (agent.domain.ercot); an emergency base point
    # ramps on the emergency curve and is followed before any normal one
    BASE_POINT = "base_point"
    EMERGENCY_BASE_POINT = "emergency_base_point"

    @property
    def is_base_point(self) -> bool:
        return self in (ObligationKind.BASE_POINT, ObligationKind.EMERGENCY_BASE_POINT)


@dataclass(frozen=True, slots=True)
class Obligation:
    """A grid dispatch the site has accepted (MQTT dispatch, OpenADR event, QSE instruction)."""

    event_id: str
    kind: ObligationKind
    kw: float  # target_kw for LIMIT, shed_kw for SHED, the base point for BASE_POINT
    start_utc: datetime
    end_utc: datetime | None = None
    program: str = "manual"
    source: str = "unknown"

    def is_active(self, now_utc: datetime) -> bool:
        return self.start_utc <= now_utc and (self.end_utc is None or now_utc < self.end_utc)


@dataclass(frozen=True, slots=True)
class ObligationCancel:
    """The grid released an obligation early (MQTT `release`, OpenADR cancellation)."""

    event_id: str
    at_utc: datetime
    source: str = "unknown"


class EmergencyLevel(StrEnum):
    """ERCOT grid conditions, least to most severe."""

    NORMAL = "normal"
    CONSERVATION = "conservation"  # conservation appeal / watch
    EEA1 = "eea1"
    EEA2 = "eea2"
    EEA3 = "eea3"


@dataclass(frozen=True, slots=True)
class EmergencySignal:
    level: EmergencyLevel
    observed_at_utc: datetime
    source: str = "unknown"


@dataclass(frozen=True, slots=True)
class PeakWarning:
    """A 4CP peak warning: a likely coincident-peak interval is near."""

    active: bool
    observed_at_utc: datetime
    source: str = "unknown"


class OverrideAction(StrEnum):
    ON = "on"  # force running at rated power
    OFF = "off"  # force off
    LIMIT = "limit"  # cap at limit_kw (device) or limit_pct of rated (device or class)


@dataclass(frozen=True, slots=True)
class Override:
    """A site engineer's manual override of one device or a whole load class."""

    override_id: str
    action: OverrideAction
    expires_at_utc: datetime
    device_id: str | None = None
    load_class: str | None = None
    limit_kw: float | None = None
    limit_pct: float | None = None
    issued_by: str = "unknown"
    issued_at_utc: datetime | None = None  # on one target the latest issued override wins

    def is_active(self, now_utc: datetime) -> bool:
        return now_utc < self.expires_at_utc


@dataclass(frozen=True, slots=True)
class GpuDemand:
    """One inference pool's demand, as its servers' metrics said it at one scrape."""

    pool: str
    observed_at_utc: datetime
    waiting: float  # requests queued, all endpoints and models
    running: float | None  # requests being served (None: the server does not export it)
    kv_cache_usage: float | None  # vLLM: the fullest endpoint's KV cache, 0-1
    queue_time_s: float | None  # Triton: mean queue time over the last scrape interval
    endpoints_up: int
    endpoints_total: int
    ttft_s: float | None = None  # vLLM: mean time to first token over the last scrape interval

    def is_stale(self, now_utc: datetime, stale_after_s: float) -> bool:
        return now_utc - self.observed_at_utc > timedelta(seconds=stale_after_s)


@dataclass(frozen=True, slots=True)
class Signals:
    """The frozen snapshot of every input signal that one cycle decides on."""

    price: PriceSignal | None = None
    obligations: tuple[Obligation, ...] = ()
    emergency: EmergencySignal | None = None
    peak_warning: PeakWarning | None = None
    overrides: tuple[Override, ...] = field(default_factory=tuple)
    # when the service started: until a price arrives it holds devices as they are (decide())
    started_at_utc: datetime | None = None
    # the latest demand of each inference pool (agent.domain.hybrid), by pool name
    gpu_demand: tuple[GpuDemand, ...] = ()

"""The process image: the latest value of every signal, frozen once per cycle.

The cycle puts what its inbox took into `SnapshotStore` (it is a `agent.ports.SignalSink`), then
calls `freeze(now, obligations)` once and decides on that value alone. Grid obligations are not
kept here: they live in the event book (agent.service.events), which hands them to `freeze`.
Overrides are keyed by override_id and expire here, so decide() never sees a finished one. The
grid condition (emergency level) and the 4CP warning are one value each, the latest replacing the
one before, with an optional expiry: a lapsed emergency becomes `normal`, a lapsed warning
inactive, and `on_grid_lapsed` is told (the audit log).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from agent.domain.signals import (
    EmergencyLevel,
    EmergencySignal,
    GpuDemand,
    Obligation,
    Override,
    PeakWarning,
    PriceSignal,
    Signals,
)

__all__ = ["AnySignal", "GridSignal", "SnapshotStore"]

AnySignal = PriceSignal | EmergencySignal | PeakWarning | Override | GpuDemand
GridSignal = EmergencySignal | PeakWarning

# Prices kept: enough for a day-ahead curve published a day early (24 hourly or 96 15-min).
_PRICES_KEPT = 200


class SnapshotStore:
    """Latest signals with when they were observed. Not thread-safe: feed it from the loop."""

    def __init__(
        self,
        on_urgent: Callable[[], None] | None = None,
        on_grid_lapsed: Callable[[GridSignal], None] | None = None,
        started_at_utc: datetime | None = None,
    ) -> None:
        self._on_urgent = on_urgent
        # when the service started: decide() holds devices as they are until a price arrives
        self.started_at_utc = started_at_utc
        # told of the emergency or warning that lapsed (its value before it lapsed)
        self.on_grid_lapsed = on_grid_lapsed
        self._prices: dict[datetime, PriceSignal] = {}
        self._overrides: dict[str, Override] = {}
        self._emergency: EmergencySignal | None = None
        self._peak_warning: PeakWarning | None = None
        self._emergency_expires: datetime | None = None
        self._peak_warning_expires: datetime | None = None
        # the latest demand of each inference pool; read by the status views, not by decide()
        # yet (the hybrid-site rules are still to come)
        self._gpu_demand: dict[str, GpuDemand] = {}

    def __call__(self, signal: AnySignal) -> None:
        """The SignalSink: take one signal."""
        urgent = True
        if isinstance(signal, PriceSignal):
            self._prices[signal.interval_start_utc] = signal
            if len(self._prices) > _PRICES_KEPT:
                del self._prices[min(self._prices)]
            urgent = False
        elif isinstance(signal, Override):
            self._overrides[signal.override_id] = signal
        elif isinstance(signal, EmergencySignal):
            self._emergency, self._emergency_expires = signal, None
        elif isinstance(signal, GpuDemand):
            self._gpu_demand[signal.pool] = signal
            urgent = False
        elif isinstance(signal, PeakWarning):
            self._peak_warning, self._peak_warning_expires = signal, None
        else:  # an obligation belongs to the event book: a wiring error, not a signal to drop
            raise TypeError(f"not a snapshot signal: {type(signal).__name__}")
        if urgent and self._on_urgent is not None:
            self._on_urgent()

    def set_grid(self, signal: GridSignal, expires_at_utc: datetime | None = None) -> None:
        """Take an emergency level or a 4CP warning that lapses by itself at `expires_at_utc`."""
        self(signal)
        if isinstance(signal, EmergencySignal):
            self._emergency_expires = expires_at_utc
        else:
            self._peak_warning_expires = expires_at_utc

    @property
    def emergency(self) -> tuple[EmergencySignal | None, datetime | None]:
        """The grid condition held now and when it lapses (None: until replaced)."""
        return self._emergency, self._emergency_expires

    @property
    def peak_warning(self) -> tuple[PeakWarning | None, datetime | None]:
        """The 4CP warning held now and when it lapses (None: until replaced)."""
        return self._peak_warning, self._peak_warning_expires

    @property
    def latest_price(self) -> PriceSignal | None:
        """The most recent price received (what a restart resumes from)."""
        if not self._prices:
            return None
        return max(self._prices.values(), key=lambda p: (p.interval_start_utc, p.observed_at_utc))

    @property
    def gpu_demand(self) -> dict[str, GpuDemand]:
        return dict(self._gpu_demand)

    @property
    def overrides(self) -> dict[str, Override]:
        return dict(self._overrides)

    def price_at(self, now: datetime) -> PriceSignal | None:
        """The price of the interval holding `now`, else the latest one that started before it.

        A price for a future interval (day-ahead) is not a price for now; a missing current one
        falls back to the last known, whose age decide() judges against the stale timeout.
        """
        started = [p for start, p in self._prices.items() if start <= now]
        if not started:
            return None
        return max(started, key=lambda p: (p.interval_start_utc, p.observed_at_utc))

    def expire(self, now: datetime) -> list[Override]:
        """Drop the overrides that expired (returned) and lapse the grid condition."""
        lapsed = [o for o in self._overrides.values() if not o.is_active(now)]
        for override in lapsed:
            del self._overrides[override.override_id]
        self._expire_grid(now)
        return lapsed

    def _expire_grid(self, now: datetime) -> None:
        # The lapsed value is kept as an explicit "normal" / inactive one observed at the expiry,
        # so the snapshot says what ended it rather than pretending nothing was ever received.
        emergency, until = self._emergency, self._emergency_expires
        if emergency is not None and until is not None and now >= until:
            self._emergency = EmergencySignal(EmergencyLevel.NORMAL, until, emergency.source)
            self._emergency_expires = None
            self._lapsed(emergency)
        warning, until = self._peak_warning, self._peak_warning_expires
        if warning is not None and until is not None and now >= until:
            self._peak_warning = PeakWarning(False, until, warning.source)
            self._peak_warning_expires = None
            self._lapsed(warning)

    def _lapsed(self, signal: GridSignal) -> None:
        if self.on_grid_lapsed is not None:
            self.on_grid_lapsed(signal)

    def freeze(self, now: datetime, obligations: tuple[Obligation, ...] = ()) -> Signals:
        """One immutable snapshot for one cycle (call expire() first to drop finished ones),
        with the event book's obligations."""
        return Signals(
            price=self.price_at(now),
            obligations=tuple(sorted(obligations, key=lambda o: o.event_id)),
            emergency=self._emergency,
            peak_warning=self._peak_warning,
            overrides=tuple(sorted(self._overrides.values(), key=lambda o: o.override_id)),
            started_at_utc=self.started_at_utc,
            gpu_demand=tuple(self._gpu_demand[pool] for pool in sorted(self._gpu_demand)),
        )

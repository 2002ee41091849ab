"""The process image: the latest value of every signal, frozen once per cycle.

Signal sources push into `SnapshotStore` (it is a `agent.ports.SignalSink`) at their own cadence;
the cycle calls `freeze(now)` once and decides on that value alone. Grid obligations are keyed by
event_id (a repeat replaces, a cancel removes), overrides by override_id; both expire here, so
decide() never sees a finished one. Urgent signals (dispatch, cancels, overrides, emergencies)
call `on_urgent` so the cycle starts at once instead of waiting for the tick.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from agent.domain.signals import (
    EmergencySignal,
    Obligation,
    ObligationCancel,
    Override,
    PeakWarning,
    PriceSignal,
    Signals,
)

__all__ = ["AnySignal", "SnapshotStore"]

AnySignal = PriceSignal | Obligation | ObligationCancel | EmergencySignal | PeakWarning | Override

# Prices kept: enough for a day-ahead curve published a day early (24 hourly or 96 15-min).
_PRICES_KEPT = 200


class SnapshotStore:
    """Latest signals with when they were observed. Not thread-safe: feed it from the loop."""

    def __init__(self, on_urgent: Callable[[], None] | None = None) -> None:
        self._on_urgent = on_urgent
        self._prices: dict[datetime, PriceSignal] = {}
        self._obligations: dict[str, Obligation] = {}
        self._overrides: dict[str, Override] = {}
        self._emergency: EmergencySignal | None = None
        self._peak_warning: PeakWarning | None = None

    def __call__(self, signal: AnySignal) -> None:
        """The SignalSink: take one signal."""
        urgent = True
        if isinstance(signal, PriceSignal):
            self._prices[signal.interval_start_utc] = signal
            if len(self._prices) > _PRICES_KEPT:
                del self._prices[min(self._prices)]
            urgent = False
        elif isinstance(signal, Obligation):
            self._obligations[signal.event_id] = signal
        elif isinstance(signal, ObligationCancel):
            self._obligations.pop(signal.event_id, None)
        elif isinstance(signal, Override):
            self._overrides[signal.override_id] = signal
        elif isinstance(signal, EmergencySignal):
            self._emergency = signal
        else:
            self._peak_warning = signal
            urgent = False
        if urgent and self._on_urgent is not None:
            self._on_urgent()

    @property
    def obligations(self) -> dict[str, Obligation]:
        return dict(self._obligations)

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

    def expire(self, now: datetime) -> tuple[list[Obligation], list[Override]]:
        """Drop obligations whose end has passed and overrides that expired; return them."""
        ended = [
            o for o in self._obligations.values() if o.end_utc is not None and now >= o.end_utc
        ]
        for obligation in ended:
            del self._obligations[obligation.event_id]
        lapsed = [o for o in self._overrides.values() if not o.is_active(now)]
        for override in lapsed:
            del self._overrides[override.override_id]
        return ended, lapsed

    def freeze(self, now: datetime) -> Signals:
        """One immutable snapshot for one cycle (call expire() first to drop finished ones)."""
        return Signals(
            price=self.price_at(now),
            obligations=tuple(sorted(self._obligations.values(), key=lambda o: o.event_id)),
            emergency=self._emergency,
            peak_warning=self._peak_warning,
            overrides=tuple(sorted(self._overrides.values(), key=lambda o: o.override_id)),
        )

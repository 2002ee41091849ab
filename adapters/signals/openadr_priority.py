"""Event priority (OpenADR 2.0b eventDescriptor.priority) for events that overlap in time.

2.0b: the lower the number, the higher the priority, and 0 means no priority (the lowest).
Where two followed events of the same program (market context) overlap, the higher-priority
one governs the overlap and the lower one is suspended for it: its obligation starts only when
the higher one's active period ends, and is released when that covers the rest of it. A
higher-priority event governs its whole active period, intervals without a restriction
included: that is how a program relaxes a standing event for a while.

Events of equal priority, and events of different programs, all stand together: every
obligation is a limit the site stays under, so the strictest of them governs the load and each
is verified against its own terms. This is the conservative reading where 2.0b leaves the choice
to the VEN.

Pure functions over EventPlans; openadr_follow.py applies them when it pushes obligations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from adapters.signals.openadr_events import EventPlan
from agent.domain.signals import Obligation

__all__ = ["Governed", "active_window", "govern", "rank"]


def rank(priority: int) -> float:
    """Sort key: smaller is more important; 0 (no priority) ranks last."""
    return float("inf") if priority <= 0 else float(priority)


def active_window(plan: EventPlan) -> tuple[datetime, datetime | None]:
    """The event's active period as planned: first step's start to last step's end (None:
    open-ended)."""
    ends = [s.end_utc for s in plan.steps]
    return plan.steps[0].start_utc, None if None in ends else max(e for e in ends if e)


@dataclass(frozen=True, slots=True)
class Governed:
    """An event's obligation after priority: in force (maybe from a later start), or
    superseded (None) with the event that supersedes it."""

    obligation: Obligation | None
    wake_utc: datetime | None  # when to look again (a higher event's start or end)
    by_event_id: str | None = None  # the higher-priority event that suspends this one


def govern(
    plan: EventPlan,
    obligation: Obligation,
    wake_utc: datetime | None,
    others: Iterable[EventPlan],
    now: datetime,
) -> Governed:
    """`obligation` (obligation_at(plan, now)) with the spans of higher-priority events of the
    same program taken out."""
    higher = sorted(
        ((*active_window(o), o.event_id) for o in others
         if o.event_id != plan.event_id and o.program == plan.program
         and rank(o.priority) < rank(plan.priority)),
        key=lambda w: w[0],
    )  # fmt: skip
    if not higher:
        return Governed(obligation, wake_utc)
    start, end = obligation.start_utc, obligation.end_utc
    moment = max(start, now)
    by: str | None = None
    moved = True
    while moved:  # step past every higher window holding the moment (they may chain)
        moved = False
        for window_start, window_end, event_id in higher:
            if window_start <= moment and (window_end is None or moment < window_end):
                if window_end is None or (end is not None and window_end >= end):
                    return Governed(None, None if window_end is None else end, event_id)
                moment, by, moved = window_end, event_id, True
    # a higher window that ended after the obligation's start moves its start (stable while
    # it stays in force), and one starting later is the next time to look again
    start = max([start, *(e for s, e, _ in higher if e is not None and start < e <= moment)])
    upcoming = [s for s, _, _ in higher if s > moment and (end is None or s < end)]
    wakes = [w for w in (wake_utc, start if start > now else None, *upcoming) if w is not None]
    governed = obligation if start == obligation.start_utc else replace(obligation, start_utc=start)
    return Governed(governed, min(wakes) if wakes else None, by)

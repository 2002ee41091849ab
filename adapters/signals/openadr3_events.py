"""OpenADR 3.0 events as dispatch obligations: the pure half of the 3.0 VEN (no IO, no clock).

A 3.0 event (toadr3's model of the VTN's JSON) becomes the same `EventPlan` as a 2.0b one
(openadr_events.py), so it is followed the same way: one obligation per event id, its kW
stepping at interval boundaries. What each payload means (OpenADR 3.0 Definition, "Event
Enumerations"):

  IMPORT_CAPACITY_LIMIT   the site's maximum import, in the descriptor's units (KW): a ceiling
  DISPATCH_SETPOINT       the site's absolute consumption: a ceiling at that figure
  SIMPLE                  a level 0-3, through `simple_levels` like 2.0b's SIMPLE

Intervals without a period of their own follow the event's intervalPeriod one after another
(interval k of the list starts k durations after its start).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from toadr3.models import Event

from adapters.signals.openadr_events import (
    EventPlan,
    FloorKw,
    Step,
    UnsupportedEventError,
    simple_level,
)
from agent.config.openadr3 import OpenAdr3Config
from agent.domain.signals import ObligationKind

__all__ = ["interval_steps", "not_for_ven", "plan_event3"]

# the payload types this VEN acts on, most specific first
_CEILINGS = ("IMPORT_CAPACITY_LIMIT", "DISPATCH_SETPOINT")
_KW_PER_UNIT = {"KW": 1.0}  # the 3.0 unit enumeration's power unit
# An event is a plan of hours or days: a day in minutes is 1,440 intervals, a year's span the
# longest any program runs. Beyond, it is refused (a 100,000-interval event cost seconds a poll).
MAX_INTERVALS = 2_000
MAX_SPAN = timedelta(days=366)


def not_for_ven(event: Event, ven_name: str, resource_names: Sequence[str] = ()) -> str | None:
    """Why an event is not this VEN's (None: it is). Every target must name this VEN: VEN_NAME
    this VEN, RESOURCE_NAME one of its resources (`openadr3.resource_names`, else the VEN's
    name); a target of another type is one this VEN cannot prove is its own. The VTN filters by
    target already; this is the VEN's own check of what it is handed."""
    resources = set(resource_names) or {ven_name}
    for target in event.targets or []:
        values = [str(v) for v in target.values or []]
        shown = ", ".join(values)[:200]
        if target.type == "VEN_NAME":
            if ven_name not in values:
                return f"targets VEN_NAME {shown}, not {ven_name}"
        elif target.type == "RESOURCE_NAME":
            if not resources & set(values):
                return f"targets RESOURCE_NAME {shown}, none of this site's resources"
        else:
            return f"targets {str(target.type)[:64]} {shown}: not a target this VEN can match"
    return None


def plan_event3(
    event: Event, config: OpenAdr3Config, floor_kw: FloorKw, program_name: str, revision: int
) -> EventPlan:
    if not event.id:
        raise UnsupportedEventError("an event without an id")
    if len(event.intervals) > MAX_INTERVALS:
        raise UnsupportedEventError(f"{len(event.intervals)} intervals: at most {MAX_INTERVALS} "
                                    "are followed")  # fmt: skip
    signal, numbered = _steps(event, config, floor_kw)
    if not numbered:
        raise UnsupportedEventError("an event without intervals")
    return EventPlan(
        event_id=event.id,
        modification_number=revision,
        program=program_name,
        signal=signal,
        steps=tuple(sorted((s for _, s in numbered), key=lambda s: s.start_utc)),
    )


def interval_steps(
    event: Event, config: OpenAdr3Config, floor_kw: FloorKw
) -> list[tuple[int, Step]]:
    """(interval id, what it asks) for each interval, in start order (reports are made of
    them: openadr3_reports.py). The event must have been planned (plan_event3) already."""
    return sorted(_steps(event, config, floor_kw)[1], key=lambda pair: pair[1].start_utc)


def _steps(
    event: Event, config: OpenAdr3Config, floor_kw: FloorKw
) -> tuple[str, list[tuple[int, Step]]]:
    units = {d.payload_type: d.units for d in event.payload_descriptors or []}
    steps: list[tuple[int, Step]] = []
    signal = ""
    for k, interval in enumerate(event.intervals):
        period = interval.interval_period or event.interval_period
        if period is None or not isinstance(period.start, datetime):
            raise UnsupportedEventError(f"interval {interval.id} has no start")
        start = period.start
        if interval.interval_period is None:
            start = start + k * period.duration
        end = None if period.duration <= timedelta(0) else start + period.duration
        if end is not None and end - start > MAX_SPAN:
            raise UnsupportedEventError(f"interval {interval.id} lasts {end - start}: longer "
                                        f"than {MAX_SPAN.days} days")  # fmt: skip
        payloads = {p.type: p.values for p in interval.payloads}
        signal, kind, kw, protected, why = _payload(payloads, units, config, floor_kw)
        steps.append((interval.id, Step(start, end, kind, kw, protected, why)))
    return signal, steps


def _payload(
    payloads: Mapping[str, Sequence[object]],
    units: dict[str, str | None],
    config: OpenAdr3Config,
    floor_kw: FloorKw,
) -> tuple[str, ObligationKind | None, float, bool, str]:
    for name in _CEILINGS:
        if name in payloads:
            value = _number(name, payloads[name])
            unit = units.get(name) or "KW"
            per = _KW_PER_UNIT.get(unit.upper())
            if per is None:
                raise UnsupportedEventError(f"{name} in {unit} is not a power this site reads")
            kw = value * per
            if not math.isfinite(kw) or kw < 0:
                raise UnsupportedEventError(f"{name} {value} is not a usable kW figure")
            return name, ObligationKind.LIMIT, kw, False, f"{name} {kw:.1f} kW"
    if "SIMPLE" in payloads:
        kind, kw, protected, why = simple_level(
            _number("SIMPLE", payloads["SIMPLE"]), config.simple_levels, floor_kw
        )
        return "SIMPLE", kind, kw, protected, why
    names = ", ".join(sorted(payloads)) or "none"
    raise UnsupportedEventError(f"no payload this site maps (interval carries: {names})")


def _number(name: str, values: Sequence[object]) -> float:
    if len(values) != 1 or isinstance(values[0], bool) or not isinstance(values[0], int | float):
        raise UnsupportedEventError(f"{name} values {values!r}: one number expected")
    return float(values[0])

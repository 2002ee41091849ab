"""OpenADR 3.0 reports: what an event's reportDescriptors ask, measured and written as the
VTN's `report` object (OpenADR 3.0.1 OpenAPI: report, reportDescriptor, reportPayloadDescriptor).

A descriptor is read as the definition says: `startInterval` (-1: the last interval) is the
event interval at whose end the first report is due; each report holds `numIntervals` intervals
(-1: all up to that one), counted back from it (`historical`: a forecast is not something this
VEN can measure, so `historical: false` is refused); a further report every `frequency`
intervals (-1: numIntervals), `repeat` reports in all (-1: until the event's last interval).
Report intervals are the event's: the same ids and periods.

What the site reports, per event interval (payload types of the 3.0 report enumeration):
  DEMAND    the mean measured site load over the interval, kW (readingType MEAN)
  USAGE     the energy the site drew over the interval, kWh (the mean times the hours)
  BASELINE  the site's load the shed is counted from (its kW at the event's start), kW
  SETPOINT  the ceiling the event set for the site in that interval, kW
The site is measured as one meter, so every report is of the site as a whole: its resource is
`AGGREGATED_REPORT` unless the VEN declares a single resource, which it then names.
Pure (no IO, no clock): the VEN (openadr3_ven.py) samples the load and posts what is due.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from toadr3.models import Event, ReportDescriptor

from adapters.signals.openadr_events import Step
from agent.domain.signals import ObligationKind

__all__ = ["SUPPORTED", "LoadLog", "Window", "due_reports", "report_body", "unsupported"]

SUPPORTED = {"DEMAND": ("MEAN", "KW"), "USAGE": ("SUMMED", "KWH"),
             "BASELINE": ("DIRECT_READ", "KW"), "SETPOINT": ("DIRECT_READ", "KW")}  # fmt: skip
AGGREGATED = "AGGREGATED_REPORT"


@dataclass(frozen=True, slots=True)
class Window:
    """One event interval: its id, period and what the event asked in it."""

    interval_id: int
    start_utc: datetime
    end_utc: datetime | None  # None: open-ended, never reported
    step: Step


class LoadLog:
    """The site's measured load over each interval of the events that ask for reports: a sum
    and a count per (event, interval), so what is kept grows with the intervals asked about,
    not with time."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, int], tuple[float, int]] = {}

    def add(self, event_id: str, windows: Sequence[Window], at: datetime, kw: float) -> None:
        """A sample at `at`, counted in the event's interval that holds it (if any)."""
        starts = [w.start_utc for w in windows]
        k = bisect.bisect_right(starts, at) - 1
        if k < 0:
            return
        end = windows[k].end_utc
        if end is not None and at >= end:
            return
        total, count = self._sums.get((event_id, k), (0.0, 0))
        self._sums[(event_id, k)] = (total + kw, count + 1)

    def mean_kw(self, event_id: str, k: int) -> float | None:
        """The mean of the samples in interval k of the event; None when there are none."""
        total, count = self._sums.get((event_id, k), (0.0, 0))
        return total / count if count else None

    def forget(self, event_id: str) -> None:
        for key in [key for key in self._sums if key[0] == event_id]:
            del self._sums[key]


def unsupported(descriptor: ReportDescriptor) -> str | None:
    """Why this VEN cannot serve a descriptor (None: it can)."""
    if descriptor.payload_type not in SUPPORTED:
        return (f"report payload {descriptor.payload_type[:64]} is not one this VEN measures "
                f"({', '.join(SUPPORTED)})")  # fmt: skip
    if not descriptor.historical:
        return "a forecast report (historical: false) is not one this VEN can measure"
    return None


def due_reports(descriptor: ReportDescriptor, windows: int) -> list[tuple[int, range]]:
    """Every report a descriptor asks of an event of `windows` intervals: (the interval at
    whose end it is due, the intervals it holds), in order."""
    if windows <= 0:
        return []
    first = descriptor.start_interval if descriptor.start_interval >= 0 else windows - 1
    if first >= windows:
        return []
    count = descriptor.num_intervals if descriptor.num_intervals > 0 else first + 1
    every = descriptor.frequency if descriptor.frequency > 0 else count
    out: list[tuple[int, range]] = []
    due = first
    while due < windows and (descriptor.repeat < 0 or len(out) < max(descriptor.repeat, 1)):
        out.append((due, range(max(0, due - count + 1), due + 1)))
        due += every
    return out


def report_body(
    event: Event, descriptor: ReportDescriptor, windows: Sequence[Window], held: range, *,
    log: LoadLog, baseline_kw: float | None, client_name: str, resource_name: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The report object for the intervals `held` of an event (values the VEN cannot know,
    such as a baseline before the shed started, are left out of that interval)."""
    payload = descriptor.payload_type
    reading, units = SUPPORTED[payload]
    intervals: list[dict[str, Any]] = []
    for k in held:
        window = windows[k]
        value = _value(payload, window, log.mean_kw(event.id or "", k), baseline_kw)
        if value is None:
            continue
        intervals.append({
            "id": window.interval_id,
            "intervalPeriod": _period(window.start_utc, window.end_utc),
            "payloads": [{"type": payload, "values": [round(value, 3)]}],
        })  # fmt: skip
    first, last = windows[held[0]], windows[held[-1]]
    return {
        "objectType": "REPORT",
        "programID": event.program_id,
        "eventID": event.id,
        "clientName": client_name,
        "reportName": f"{event.id}:{payload}:{held[-1]}",
        "payloadDescriptors": [
            {
                "objectType": "REPORT_PAYLOAD_DESCRIPTOR",
                "payloadType": payload,
                "readingType": reading,
                "units": units,
            }
        ],
        "resources": [
            {
                "resourceName": resource_name or AGGREGATED,
                "intervalPeriod": _period(first.start_utc, last.end_utc),
                "intervals": intervals,
            }
        ],
    }


def _value(
    payload: str, window: Window, mean_kw: float | None, baseline_kw: float | None
) -> float | None:
    step, value = window.step, None
    if window.end_utc is None:
        pass
    elif payload in {"DEMAND", "USAGE"}:
        value = mean_kw
        if value is not None and payload == "USAGE":
            value *= (window.end_utc - window.start_utc).total_seconds() / 3600.0
    elif payload == "BASELINE":
        value = baseline_kw
    elif step.kind is ObligationKind.LIMIT:  # SETPOINT: the ceiling the event set
        value = step.kw
    elif step.kind is ObligationKind.SHED and baseline_kw is not None:
        value = max(0.0, baseline_kw - step.kw)
    return value


def _period(start: datetime, end: datetime | None) -> dict[str, str]:
    seconds = 0 if end is None else round((end - start).total_seconds())
    return {"start": start.isoformat().replace("+00:00", "Z"), "duration": f"PT{seconds}S"}

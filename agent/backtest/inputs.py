"""The backtest's side inputs, from frames the command has read: dispatch events, a capacity
price series, a system-load series. Each is checked here and every problem named with its row.

Dispatch events CSV (one row per event; times ISO-8601 with an offset or `Z`):

    event_id,kind,kw,start,end,program
    ers-0507,shed,5000,2024-05-08T19:00:00-05:00,2024-05-08T21:00:00-05:00,ERS
    limit-1,limit,20000,2024-08-20T23:30:00Z,,manual

`kind` is `limit` (keep the site at or below `kw`) or `shed` (draw `kw` less than the site did when
the event began); an empty `end` lasts to the end of the backtest; `program` may be empty.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd

from agent.backtest.errors import BacktestInputError
from agent.backtest.replay import Intervals
from agent.domain.fleet import FloatArray
from agent.domain.signals import Obligation, ObligationKind

__all__ = ["DISPATCH_COLUMNS", "hourly_series", "load_series", "obligations_from_frame"]

DISPATCH_COLUMNS = ("event_id", "kind", "kw", "start", "end", "program")


def obligations_from_frame(frame: pd.DataFrame, source: str) -> list[Obligation]:
    """Dispatch events as the Obligations decide() reads (every bad row reported at once)."""
    missing = [c for c in DISPATCH_COLUMNS if c not in frame.columns and c != "program"]
    if missing:
        raise BacktestInputError(f"{source}: missing column(s) {missing}")
    problems: list[str] = []
    events: list[Obligation] = []
    seen: set[str] = set()
    for row, raw in enumerate(frame.to_dict("records"), start=2):
        try:
            event = _obligation({str(k): v for k, v in raw.items()}, source)
        except ValueError as error:
            problems.append(f"{source}:{row}: {error}")
            continue
        if event.event_id in seen:
            problems.append(f"{source}:{row}: event_id {event.event_id!r} repeats")
        seen.add(event.event_id)
        events.append(event)
    if problems:
        raise BacktestInputError("\n".join(problems))
    return events


def _obligation(record: dict[str, object], source: str) -> Obligation:
    event_id = _text(record.get("event_id"))
    if not event_id:
        raise ValueError("event_id is empty")
    kind_text = _text(record.get("kind")).lower()
    try:
        kind = ObligationKind(kind_text)
    except ValueError:
        raise ValueError(f"kind {kind_text!r} is not limit or shed") from None
    kw = float(str(record.get("kw")))
    if not math.isfinite(kw) or kw < 0:
        raise ValueError(f"kw {record.get('kw')!r} is not a non-negative number")
    start = _instant(record.get("start"), "start")
    end_text = _text(record.get("end"))
    end = _instant(end_text, "end") if end_text else None
    if end is not None and end <= start:
        raise ValueError("end is not after start")
    program = _text(record.get("program")) or "backtest"
    return Obligation(event_id, kind, kw, start, end, program=program, source=source)


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _instant(value: object, name: str) -> datetime:
    text = _text(value)
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an ISO-8601 time") from None
    if pd.isna(stamp) or stamp.tzinfo is None:
        raise ValueError(f"{name} {text!r} needs a UTC offset or Z (times are not guessed)")
    result: datetime = stamp.tz_convert("UTC").to_pydatetime()
    return result


def _utc_ns(frame: pd.DataFrame, source: str) -> np.ndarray:
    if "interval_start_utc" not in frame.columns:
        raise BacktestInputError(f"{source}: missing column interval_start_utc")
    parsed = pd.to_datetime(
        frame["interval_start_utc"], utc=True, format="ISO8601", errors="coerce"
    )
    if parsed.isna().any():
        row = int(parsed.isna().to_numpy().argmax()) + 2
        raise BacktestInputError(f"{source}:{row}: interval_start_utc is not a UTC time")
    return np.asarray(parsed.dt.as_unit("ns").astype("int64"), dtype=np.int64)


def _column(frame: pd.DataFrame, name: str, source: str) -> FloatArray:
    if name not in frame.columns:
        raise BacktestInputError(f"{source}: missing column {name}")
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        row = int(np.isnan(values).argmax()) + 2
        raise BacktestInputError(f"{source}:{row}: {name} is not a number")
    return values


def hourly_series(
    frame: pd.DataFrame, intervals: Intervals, column: str, source: str
) -> FloatArray:
    """A per-hour series (`interval_start_utc`, `column`) read at each interval: the value of the
    hour the interval starts in; 0 where the series has no such hour."""
    start = _utc_ns(frame, source)
    values = _column(frame, column, source)
    order = np.argsort(start, kind="stable")
    start, values = start[order], values[order]
    hour_ns = 3600 * 1_000_000_000
    pos = np.searchsorted(start, intervals.start_ns, side="right") - 1
    found = (pos >= 0) & (intervals.start_ns - start[np.maximum(pos, 0)] < hour_ns)
    return np.where(found, values[np.maximum(pos, 0)], 0.0)


def load_series(frame: pd.DataFrame, source: str) -> tuple[np.ndarray, FloatArray]:
    """A system-load series: `interval_start_utc`, `system_load_mw` (15-minute intervals)."""
    start = _utc_ns(frame, source)
    load = _column(frame, "system_load_mw", source)
    order = np.argsort(start, kind="stable")
    return start[order], load[order]

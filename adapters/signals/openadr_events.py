"""OpenADR 2.0b events as dispatch obligations: the pure half of the VEN (no IO, no clock).

An event (as openleadr parses it) becomes an `EventPlan`: its intervals as time-ordered steps,
each with what the site must do (a ceiling, an amount to shed, or nothing), with the event's
randomization and ramp-up applied. `obligation_at` then says which `Obligation` stands for the
event at a given instant, and when to look again.

One event is one obligation id (the OpenADR event id), whatever its intervals: the engine keeps
a shed obligation's baseline by id, so a new id per interval would take a fresh baseline from a
site that is already shedding and shed twice. Contiguous restricting intervals therefore form
one obligation whose kW is replaced at each interval boundary; a gap (a level mapped to `none`)
lets it lapse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.config import OpenAdrConfig, OpenAdrLevelConfig, OpenAdrSetpointConfig
from agent.domain.settings import Posture
from agent.domain.signals import Obligation, ObligationKind, PriceSignal

__all__ = [
    "EventPlan",
    "SiteNow",
    "Step",
    "UnsupportedEventError",
    "check_feasible",
    "not_for_site",
    "obligation_at",
    "plan_event",
    "price_signals",
    "simple_level",
    "startafter_s",
]

SOURCE = "openadr"

# The lowest load the site can reach, with or without protected load: SiteView.floor_kw.
FloorKw = Callable[[bool], float]

# OpenADR itemBase siScaleCode, as kW per unit of a W-denominated value.
_KW_PER_SCALED_W = {
    "p": 1e-15, "n": 1e-12, "micro": 1e-9, "m": 1e-6, "c": 1e-5, "d": 1e-4,
    "none": 1e-3, "k": 1.0, "M": 1e3, "G": 1e6, "T": 1e9,
}  # fmt: skip
_KW_PER_UNIT = {"W": 1e-3, "kW": 1.0, "MW": 1e3}

# The signals this VEN acts on, most specific first: a 2.0b event carries a SIMPLE signal for
# 2.0a VENs beside the detailed one, and the detailed one is what the program means. Per
# signal, the types it takes (a LOAD_CONTROL level offset has no meaning without the program's
# own level table, a LOAD_DISPATCH multiplier none without a reference load).
_SUPPORTED_TYPES = {
    "LOAD_DISPATCH": ("setpoint", "delta"),
    "LOAD_CONTROL": (
        "x-loadControlSetpoint",
        "x-loadControlCapacity",
        "x-loadControlPercentOffset",
    ),
}
# Price signals the VEN can feed to the engine: absolute prices, in $/MWh once converted.
_PRICE_SIGNALS = ("ELECTRICITY_PRICE", "ENERGY_PRICE")
_USD_PER_MWH_PER_UNIT = {"currencyPerKWh": 1000.0}  # the one energy price unit of 2.0b
# A feasibility margin: floors and ceilings are sums of floats.
_FEASIBLE_EPS_KW = 1e-6


class UnsupportedEventError(ValueError):
    """The event asks for something this site's mapping cannot express; the VEN opts out."""


@dataclass(frozen=True, slots=True)
class Step:
    """One interval of an event as the site must follow it (kind None: no restriction)."""

    start_utc: datetime
    end_utc: datetime | None  # None: open-ended (an OpenADR duration of zero)
    kind: ObligationKind | None
    kw: float  # target kW for LIMIT, kW to shed for SHED, 0 when kind is None
    include_protected: bool = False  # the mapping lets protected load go too
    why: str = ""


@dataclass(frozen=True, slots=True)
class SiteNow:
    """What relative signals are relative to."""

    load_kw: float  # the site's load when the event was first accepted (percent offsets)
    capacity_kw: float  # every device at its rating (capacity fractions)


@dataclass(frozen=True, slots=True)
class EventPlan:
    event_id: str
    modification_number: int
    program: str
    signal: str
    steps: tuple[Step, ...]
    priority: int = 0  # eventDescriptor.priority: lower is higher, 0 none (openadr_priority)


def startafter_s(event: Mapping[str, Any]) -> float:
    """The event's randomization window (tolerance.tolerate.startafter), in seconds."""
    tolerance = event.get("active_period", {}).get("tolerance") or {}
    window = (tolerance.get("tolerate") or {}).get("startafter")
    return window.total_seconds() if isinstance(window, timedelta) else 0.0


def plan_event(
    event: Mapping[str, Any],
    config: OpenAdrConfig,
    floor_kw: FloorKw,
    offset_s: float = 0.0,
    site: SiteNow | None = None,
) -> EventPlan:
    """Translate one parsed event; `offset_s` is this VEN's draw within the startafter window."""
    descriptor = event["event_descriptor"]
    signal = _pick_signal(event, config)
    name = str(signal["signal_name"]).upper()
    intervals = sorted(signal.get("intervals") or [], key=lambda i: i["dtstart"])
    if not intervals:
        raise UnsupportedEventError(f"{name} signal has no intervals")
    offset = timedelta(seconds=offset_s)
    ramp_up = event.get("active_period", {}).get("ramp_up")
    steps: list[Step] = []
    for interval in intervals:
        start = interval["dtstart"] + offset
        duration: timedelta = interval.get("duration") or timedelta(0)
        end = None if duration <= timedelta(0) else start + duration
        value = float(interval["signal_payload"])
        if name == "SIMPLE":
            kind, kw, protected, why = simple_level(value, config.simple_levels, floor_kw)
        else:
            setpoint = config.load_dispatch if name == "LOAD_DISPATCH" else config.load_control
            assert setpoint is not None  # _pick_signal only picks a mapped signal
            kind, kw, why = _detailed(value, signal, setpoint, name, site)
            protected = False
        steps.append(Step(start, end, kind, kw, protected, why))
    # Ramp-up: the resource may move during this period before the start, so it is at the
    # target when the event starts (OpenADR 2.0b x-eiRampUp).
    if isinstance(ramp_up, timedelta) and ramp_up > timedelta(0):
        first = steps[0]
        steps[0] = Step(
            first.start_utc - ramp_up, first.end_utc, first.kind, first.kw,
            first.include_protected, first.why,
        )  # fmt: skip
    return EventPlan(
        event_id=str(descriptor["event_id"]),
        modification_number=int(descriptor.get("modification_number") or 0),
        program=str(descriptor.get("market_context") or "openadr"),
        signal=name,
        steps=tuple(steps),
        priority=_priority(descriptor.get("priority")),
    )


def _priority(value: object) -> int:
    """eventDescriptor.priority as a number (absent or unreadable: 0, no priority)."""
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def price_signals(event: Mapping[str, Any], observed_at: datetime) -> list[PriceSignal]:
    """The prices an ELECTRICITY_PRICE or ENERGY_PRICE signal of the event announces, one per
    interval ([] when it carries none). Only absolute prices (signal type `price`) in USD per
    kWh (itemBase currencyPerKWh) are taken: a relative price or a multiplier says nothing the
    engine can compare with a class's breakeven."""
    by_name = {str(s["signal_name"]).upper(): s for s in event.get("event_signals") or []}
    name = next((n for n in _PRICE_SIGNALS if n in by_name), None)
    if name is None:
        return []
    signal = by_name[name]
    if signal.get("signal_type") != "price":
        raise UnsupportedEventError(
            f"{name} of type {signal.get('signal_type')} is not supported (only price)"
        )
    measurement = signal.get("measurement") or {}
    per = _USD_PER_MWH_PER_UNIT.get(str(measurement.get("name") or ""))
    scale = measurement.get("scale") or "none"
    if per is None or measurement.get("unit") != "USD" or scale != "none":
        raise UnsupportedEventError(
            f"{name} itemBase {measurement.get('name')} in {scale} {measurement.get('unit')} "
            "is not USD per kWh"
        )
    program = str(event["event_descriptor"].get("market_context") or "openadr")
    prices = []
    for interval in sorted(signal.get("intervals") or [], key=lambda i: i["dtstart"]):
        duration: timedelta = interval.get("duration") or timedelta(0)
        value = float(interval["signal_payload"]) * per
        if duration <= timedelta(0) or not math.isfinite(value):
            raise UnsupportedEventError(f"{name} interval without a duration or a finite price")
        start = interval["dtstart"]
        prices.append(PriceSignal(value, start, start + duration, observed_at, program,
                                  "openadr", SOURCE))  # fmt: skip
    return prices


def not_for_site(event: Mapping[str, Any], ven_id: str | None, config: OpenAdrConfig) -> str | None:
    """Why an event is not this site's to follow (None: it is), from its market context and
    eiTarget against the site file's enrolment. VEN-level targets (venID, partyID, groupID)
    say whom the event addresses; resourceIDs say which resources: both must name this site
    when present. An event without targets is the VTN's word that it is for this VEN."""
    context = str(event["event_descriptor"].get("market_context") or "")
    if config.programs and context not in config.programs:
        enrolled = ", ".join(config.programs)
        return f"market context {context or '(none)'} is not a program of this site ({enrolled})"
    ours: dict[str, set[str]] = {
        "ven_id": set() if ven_id is None else {ven_id},
        "party_id": set(config.party_ids),
        "group_id": set(config.group_ids),
        "resource_id": {config.report_resource_id, *config.resource_ids},
    }
    named: dict[str, set[str]] = {key: set() for key in ours}
    for target in event.get("targets") or []:
        if isinstance(target, Mapping):
            for key, found in named.items():
                value = target.get(key)
                if value is not None:
                    found.add(str(value))
    addressed = [k for k in ("ven_id", "party_id", "group_id") if named[k]]
    if addressed and not any(named[k] & ours[k] for k in addressed):
        asked = "; ".join(f"{k} {', '.join(sorted(named[k]))}" for k in addressed)
        return f"targets {asked}, not this VEN"
    if named["resource_id"] and not named["resource_id"] & ours["resource_id"]:
        asked = ", ".join(sorted(named["resource_id"]))
        return f"targets resource {asked}, which this site does not have"
    return None


def _pick_signal(event: Mapping[str, Any], config: OpenAdrConfig) -> Mapping[str, Any]:
    signals = event.get("event_signals") or []
    by_name = {str(s["signal_name"]).upper(): s for s in signals}
    refused = None
    for name, types in _SUPPORTED_TYPES.items():
        mapped = config.load_dispatch if name == "LOAD_DISPATCH" else config.load_control
        if name in by_name and mapped is not None:
            signal_type = by_name[name].get("signal_type")
            if signal_type not in types:
                refused = f"{name} of type {signal_type} is not supported (only {', '.join(types)})"
                continue  # a SIMPLE signal beside it is what a 2.0b VTN sends for such VENs
            chosen: Mapping[str, Any] = by_name[name]
            return chosen
    if refused is not None and "SIMPLE" not in by_name:
        raise UnsupportedEventError(refused)
    if "SIMPLE" in by_name:
        simple: Mapping[str, Any] = by_name["SIMPLE"]
        return simple
    names = ", ".join(sorted(by_name)) or "none"
    raise UnsupportedEventError(f"no signal this site maps (event carries: {names})")


def simple_level(
    value: float, levels: Mapping[int, OpenAdrLevelConfig], floor_kw: FloorKw
) -> tuple[ObligationKind | None, float, bool, str]:
    """A SIMPLE payload (0-3) through the site's level mapping: (kind, kW, protected, why)."""
    level = round(value)
    if not math.isclose(value, level) or not 0 <= level <= 3:
        raise UnsupportedEventError(f"SIMPLE payload {value} is not a level 0-3")
    mapping = levels.get(level)
    if mapping is None:
        raise UnsupportedEventError(f"SIMPLE level {level} is not mapped in openadr.simple_levels")
    if mapping.ceiling_kw is not None:
        return ObligationKind.LIMIT, mapping.ceiling_kw, False, f"SIMPLE level {level}"
    if mapping.shed_kw is not None:
        return ObligationKind.SHED, mapping.shed_kw, False, f"SIMPLE level {level}"
    if mapping.posture is None or mapping.posture is Posture.NONE:
        return None, 0.0, False, f"SIMPLE level {level}: no restriction"
    # A posture becomes the site floor it implies, read when the event arrives (or changes).
    protected = mapping.posture is Posture.CURTAIL_PROTECTED
    why = f"SIMPLE level {level}: posture {mapping.posture.value}"
    return ObligationKind.LIMIT, floor_kw(protected), protected, why


def _detailed(
    value: float,
    signal: Mapping[str, Any],
    setpoint: OpenAdrSetpointConfig,
    name: str,
    site: SiteNow | None,
) -> tuple[ObligationKind | None, float, str]:
    """One interval of a LOAD_DISPATCH or LOAD_CONTROL signal, by its type."""
    signal_type = signal.get("signal_type")
    if signal_type in ("setpoint", "x-loadControlSetpoint"):
        return _setpoint(value, signal, setpoint, name)
    if signal_type == "delta":  # a change of load in power units: negative asks for less
        delta_kw = value * _kw_per_unit(signal, setpoint, name)
        if not math.isfinite(delta_kw):
            raise UnsupportedEventError(f"{name} delta {value} is not a usable kW figure")
        if delta_kw >= 0:
            return None, 0.0, f"{name} delta +{delta_kw:.1f} kW: no reduction asked"
        return ObligationKind.SHED, -delta_kw, f"{name} delta {delta_kw:.1f} kW"
    if site is None:
        raise UnsupportedEventError(f"{name} {signal_type} needs the site's load")
    if signal_type == "x-loadControlCapacity":  # the fraction of capacity the load may use
        if not 0 <= value <= 1:
            raise UnsupportedEventError(f"{name} capacity {value} is not a fraction 0-1")
        kw = value * site.capacity_kw
        return ObligationKind.LIMIT, kw, f"{name} capacity {value:.0%} of {site.capacity_kw:.1f} kW"
    # x-loadControlPercentOffset: percent of the load; negative asks for less
    if not -100 <= value <= 100:
        raise UnsupportedEventError(f"{name} percent offset {value} is not -100 to 100")
    if value >= 0:
        return None, 0.0, f"{name} offset +{value:g} %: no reduction asked"
    kw = -value / 100 * site.load_kw
    return ObligationKind.SHED, kw, f"{name} offset {value:g} % of {site.load_kw:.1f} kW"


def _setpoint(
    value: float, signal: Mapping[str, Any], setpoint: OpenAdrSetpointConfig, name: str
) -> tuple[ObligationKind, float, str]:
    kw = value * _kw_per_unit(signal, setpoint, name)
    if not math.isfinite(kw) or kw < 0:
        raise UnsupportedEventError(f"{name} value {value} is not a usable kW figure")
    if setpoint.meaning == "ceiling":
        return ObligationKind.LIMIT, kw, f"{name} setpoint {kw:.1f} kW"
    return ObligationKind.SHED, kw, f"{name} shed {kw:.1f} kW"


def _kw_per_unit(signal: Mapping[str, Any], setpoint: OpenAdrSetpointConfig, name: str) -> float:
    measurement = signal.get("measurement")
    if not measurement:
        return _KW_PER_UNIT[setpoint.unit]
    unit, scale = measurement.get("unit"), measurement.get("scale") or "none"
    if unit != "W" or scale not in _KW_PER_SCALED_W:
        raise UnsupportedEventError(f"{name} itemBase in {scale} {unit} is not a real power")
    return _KW_PER_SCALED_W[scale]


def _runs(steps: Sequence[Step]) -> list[list[Step]]:
    """Restricting steps grouped into runs that follow each other without a gap."""
    runs: list[list[Step]] = []
    for step in steps:
        if step.kind is None:
            continue
        if runs and runs[-1][-1].end_utc is not None and runs[-1][-1].end_utc >= step.start_utc:
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


def obligation_at(plan: EventPlan, now: datetime) -> tuple[Obligation | None, datetime | None]:
    """The obligation that stands for the event at `now` (the current run, else the next one),
    and the next instant at which it changes; (None, None) once the event has nothing left."""
    for run in _runs(plan.steps):
        run_end = run[-1].end_utc
        if run_end is not None and run_end <= now:
            continue
        current = next((s for s in run if s.end_utc is None or s.end_utc > now), run[-1])
        assert current.kind is not None
        obligation = Obligation(
            event_id=plan.event_id,
            kind=current.kind,
            kw=current.kw,
            start_utc=run[0].start_utc,
            end_utc=run_end,
            program=plan.program,
            source=SOURCE,
        )
        boundaries = [s.start_utc for s in run[1:] if s.start_utc > now]
        wake = min(boundaries) if boundaries else run_end
        return obligation, wake
    return None, None


def check_feasible(plan: EventPlan, site_kw: float, floor_kw: FloorKw) -> str | None:
    """None when the flexible load can meet every step, else the reason to opt out.

    A shed is judged against the load now, the best estimate of its baseline at the start."""
    for step in plan.steps:
        if step.kind is None:
            continue
        ceiling = step.kw if step.kind is ObligationKind.LIMIT else site_kw - step.kw
        floor = floor_kw(step.include_protected)
        if ceiling < floor - _FEASIBLE_EPS_KW:
            loads = (
                "critical and unreachable"
                if step.include_protected
                else "protected, critical and unreachable"
            )
            return (
                f"{step.why}: ceiling {ceiling:.1f} kW from {step.start_utc:%Y-%m-%d %H:%M:%S} UTC "
                f"is below the {floor:.1f} kW of {loads} load the site keeps"
            )
    return None

"""The metrics of gridflex's Sparkplug B edge node: one table for the node (the site), one for
each load class (a Sparkplug device). docs/sparkplug.md is generated from these tables."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.scada.sparkplug_codec import DataType

__all__ = ["CLASS_METRICS", "NODE_METRICS", "SPECS", "MetricSpec", "class_kw_spec"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    datatype: DataType
    what: str
    unit: str | None = None
    writable: bool = False
    deadband: float = 0.0  # reported again once it moved further than this


D, B, S, N = DataType.DOUBLE, DataType.BOOLEAN, DataType.STRING, DataType.INT32
NODE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("Site/Verified kW", D, "site load, measured where devices report", "kW", False, 1),
    MetricSpec("Site/Planned kW", D, "what the latest decision plans", "kW", False, 1),
    MetricSpec(
        "Site/Ceiling kW", D, "the binding ceiling (dispatch, import limit); null: none", "kW"
    ),
    MetricSpec("Price/USD per MWh", D, "the price the engine decides on", "$/MWh", False, 0.01),
    MetricSpec("Price/Age s", D, "seconds since that price's interval ended", "s", False, 60),
    MetricSpec("Price/Stale", B, "older than policy.price_stale_after_s: the stale posture"),
    MetricSpec(
        "Grid/Emergency Level",
        S,
        "normal, conservation, eea1-3; write to declare one",
        writable=True,
    ),
    MetricSpec("Grid/4CP Warning", B, "a 4CP peak warning is in force"),
    MetricSpec("Grid/Posture", S, "the posture the grid condition applies (none: none)"),
    MetricSpec("Grid/Last Status", S, "accepted or rejected: the last Emergency Level write"),
    MetricSpec("Grid/Last Reason", S, "why"),
    MetricSpec("Events/Live", N, "dispatch events live now (any source)"),
    MetricSpec("Events/All Compliant", B, "every live event is active: verified under its ceiling"),
    MetricSpec(
        "Events/Worst Over kW",
        D,
        "the largest excess over a live event's ceiling so far",
        "kW",
        False,
        1,
    ),
    MetricSpec("Events/Summary", S, "each live event: id, status, ask, compliant cycles"),
    MetricSpec("Devices/Total", N, "devices in the site file"),
    MetricSpec("Devices/Available", N, "devices answering their driver"),
    MetricSpec("Devices/Not Obeying", N, "still drawing more than commanded after settling"),
    MetricSpec("Devices/Unavailable", N, "not answering: planned around"),
    MetricSpec("Devices/Implausible", N, "readings no device of that rating can give"),
    MetricSpec(
        "Dispatch/Limit kW",
        D,
        "write: a site ceiling until released (event "
        "scada-<ms>); reads: the lowest ceiling of the live SCADA events",
        "kW",
        True,
    ),
    MetricSpec("Dispatch/Release", B, "write true: release every live SCADA event", None, True),
    MetricSpec("Dispatch/Last Event ID", S, "the SCADA event the two metrics below are about"),
    MetricSpec(
        "Dispatch/Last Status",
        S,
        "accepted, active, non_compliant, completed, expired, "
        "released or rejected, as its acks say",
    ),
    MetricSpec("Dispatch/Last Reason", S, "the ack's reason"),
)
CLASS_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("Priority", S, "interruptible, flexible, protected or critical"),
    MetricSpec("Planned kW", D, "what the latest decision gives the class", "kW", False, 1),
    MetricSpec("Rated kW", D, "the class's devices at their rating", "kW"),
    MetricSpec("Devices", N, "devices in the class"),
    MetricSpec("Devices Not Obeying", N, "of them, still drawing more than commanded"),
    MetricSpec("Devices Unavailable", N, "of them, not answering"),
    MetricSpec(
        "Override/Action",
        S,
        "write on, off or clear: an override of the whole class "
        "(id scada-<class>) for Override/Minutes; reads: the one in force",
        None,
        True,
    ),
    MetricSpec(
        "Override/Limit kW",
        D,
        "write: cap the class at this many kW for Override/Minutes",
        "kW",
        True,
    ),
    MetricSpec("Override/Minutes", N, "how long the next override write lasts", "min", True),
    MetricSpec(
        "Override/Last Status",
        S,
        "the override ack's status (applied, partial, not_applied, expired, cleared, rejected)",
    ),
    MetricSpec("Override/Last Reason", S, "why"),
)
SPECS = {m.name: m for m in (*NODE_METRICS, *CLASS_METRICS)}


def class_kw_spec(class_name: str) -> MetricSpec:
    """The node metric of one load class's planned kW (`Classes/<class> kW`), one per class."""
    name = class_name if class_name.startswith("Classes/") else f"Classes/{class_name} kW"
    return MetricSpec(name, D, "what the latest decision gives the class", "kW", False, 1)

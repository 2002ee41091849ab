"""The site as a Sparkplug B edge node: what it reports (the metric tables below, from which
docs/sparkplug.md is generated) and what SCADA may write.

Node metrics describe the site; one Sparkplug device per load class describes that class.
Writes (NCMD/DCMD, with `sparkplug.accept_commands`) become the same JSON messages the MQTT
interface takes and go through the same intake: validation, audit, precedence and acks. Their
outcome, and every later state of an event they started, shows in the `Last Status` and
`Last Reason` metrics of the next NDATA/DDATA, and in the audit (source `sparkplug`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from adapters.scada.sparkplug_codec import DataType, Metric, Value
from adapters.scada.sparkplug_node import MetricSource
from agent.app.assembly import Service
from agent.app.sparkplug_metrics import (
    CLASS_METRICS,
    NODE_METRICS,
    SPECS,
    MetricSpec,
    class_kw_spec,
)
from agent.domain.settings import Posture
from agent.domain.signals import EmergencyLevel
from agent.ports import Clock
from agent.service.checks import safe_text
from agent.service.ratelimit import TopicRateLimit

__all__ = ["SparkplugBridge"]

log = logging.getLogger("gridflex.sparkplug")

SOURCE = "sparkplug"
MAX_COMMAND_METRICS = 64  # a SCADA write names a few metrics; thousands in one is a flood
DEFAULT_OVERRIDE_MIN = 60


class SparkplugBridge(MetricSource):
    """Reads the service for the edge node, and turns SCADA's writes into intake messages."""

    def __init__(
        self,
        service: Service,
        view: Callable[[], dict[str, Any]],
        clock: Clock,
        accept_commands: bool,
    ) -> None:
        self._service = service
        self._view = view
        self._clock = clock
        self._accept = accept_commands
        # overrides written from SCADA (their ids name their class); events written from SCADA
        # are known by their owner, stored with them: a restart keeps what SCADA may release
        self._node_result: dict[str, Value] = {
            "Dispatch/Last Event ID": "",
            "Dispatch/Last Status": "",
            "Dispatch/Last Reason": "",
            "Grid/Last Status": "",
            "Grid/Last Reason": "",
        }
        self._class_result: dict[str, dict[str, Value]] = {}
        self._minutes: dict[str, int] = {}
        self._grid_pending = False
        self._refusals = TopicRateLimit(1.0, 20)  # audit rows and log lines of refused writes
        # the edge node's "report now" (set once it exists): a write's outcome is known when the
        # cycle that took it, or a later one (active), acks it
        self.report_now: Callable[[], None] = lambda: None
        self._current: dict[str, Any] | None = None  # the service's view for this round
        service.ack_listeners.append(self._heard)

    def refresh(self) -> None:
        self._current = self._view()

    def _round_view(self) -> dict[str, Any]:
        if self._current is None:
            self._current = self._view()
        return self._current

    # -- what is reported ----------------------------------------------------------------------
    def deadband(self, name: str) -> float:
        spec = SPECS.get(name)
        if spec is None and name.startswith("Classes/"):
            spec = class_kw_spec(name)
        return 0.0 if spec is None else spec.deadband

    def node_metrics(self) -> list[Metric]:
        view = self._round_view()
        t = view["telemetry"]
        counts = view["attention"]["counts"]
        events = view["events"]
        values: dict[str, Value] = {
            "Site/Verified kW": t["site_kw"],
            "Site/Planned kW": t["planned_kw"],
            "Site/Ceiling kW": t["site_ceiling_kw"],
            "Price/USD per MWh": t["price_usd_per_mwh"],
            "Price/Age s": self._price_age_s(),
            "Price/Stale": t["price_stale"],
            "Grid/Emergency Level": t["grid_emergency"],
            "Grid/4CP Warning": t["fourcp_warning"],
            "Grid/Posture": self._posture(t),
            "Events/Live": len(events),
            "Events/All Compliant": all(e["status"] == "active" for e in events),
            "Events/Worst Over kW": max(
                (e["compliance"]["worst_over_kw"] for e in events if e["compliance"]), default=0.0
            ),
            "Events/Summary": "; ".join(_summary(e) for e in events),
            "Devices/Total": t["devices_total"],
            "Devices/Available": t["devices_available"],
            "Devices/Not Obeying": counts.get("not_obeying", 0),
            "Devices/Unavailable": counts.get("unavailable", 0),
            "Devices/Implausible": counts.get("implausible", 0),
            "Dispatch/Limit kW": min(
                (
                    e["requested_kw"]
                    for e in events
                    if self._scada_event(e["event_id"]) and e["kind"] == "limit"
                ),
                default=None,
            ),
            "Dispatch/Release": False,
            **self._node_result,
        }
        node = [_metric(spec, values[spec.name]) for spec in NODE_METRICS]
        per_class = [
            _metric(class_kw_spec(c.name), t["class_kw"].get(c.name, 0.0))
            for c in self._service.shell.fleet.classes
        ]
        return node + per_class

    def device_metrics(self) -> Mapping[str, list[Metric]]:
        service = self._service
        fleet, devices = service.shell.fleet, service.shell.devices
        view = self._round_view()
        planned = view["telemetry"]["class_kw"]
        now = self._clock()
        overrides = {
            o.load_class: o
            for o in service.snapshot.overrides.values()
            if o.override_id.startswith("scada-") and o.is_active(now)
        }
        out: dict[str, list[Metric]] = {}
        for k, load_class in enumerate(fleet.classes):
            members = fleet.class_index == k
            driven = members & devices.has_driver
            held = overrides.get(load_class.name)
            values: dict[str, Value] = {
                "Priority": load_class.priority.label,
                "Planned kW": planned.get(load_class.name, 0.0),
                "Rated kW": float(fleet.rated_kw[members].sum()),
                "Devices": int(members.sum()),
                "Devices Not Obeying": int((driven & ~devices.obeying).sum()),
                "Devices Unavailable": int((driven & ~devices.available).sum()),
                "Override/Action": "" if held is None else held.action.value,
                "Override/Limit kW": None if held is None else held.limit_kw,
                "Override/Minutes": self._minutes.get(load_class.name, DEFAULT_OVERRIDE_MIN),
                "Override/Last Status": "",
                "Override/Last Reason": "",
                **self._class_result.get(load_class.name, {}),
            }
            out[load_class.name] = [_metric(spec, values[spec.name]) for spec in CLASS_METRICS]
        return out

    def _price_age_s(self) -> float | None:
        now = self._clock()
        price = self._service.snapshot.price_at(now)
        return None if price is None else max(0.0, (now - price.interval_end_utc).total_seconds())

    def _posture(self, t: Mapping[str, Any]) -> str:
        policy = self._service.shell.policy
        if t["grid_emergency"] != "normal":
            return policy.emergency_postures.get(
                EmergencyLevel(t["grid_emergency"]), Posture.NONE
            ).value
        if t["fourcp_warning"] and policy.fourcp is not None:
            return policy.fourcp.posture.value
        return Posture.NONE.value

    # -- what SCADA writes ---------------------------------------------------------------------
    def command(self, device_id: str | None, metrics: list[Metric]) -> None:
        if len(metrics) > MAX_COMMAND_METRICS:  # one refusal for the lot, not one per metric
            self._refused(device_id, metrics[0], f"{len(metrics)} metrics in one command: at "
                          f"most {MAX_COMMAND_METRICS} are taken; none was")  # fmt: skip
            return
        for metric in metrics:
            if device_id is None:
                self._node_command(metric)
            else:
                self._class_command(device_id, metric)

    def _node_command(self, metric: Metric) -> None:
        now = self._clock()
        spec = SPECS.get(metric.name)
        if spec is None or not spec.writable or spec not in NODE_METRICS:
            self._refused(None, metric, f"{safe_text(metric.name, 64)} is not a writable node "
                          "metric")  # fmt: skip
            return
        if not self._accept:
            self._refused(None, metric, "commands are off (sparkplug.accept_commands)")
            return
        intake, grid = self._service.intake, self._service.grid
        if metric.name == "Dispatch/Limit kW":
            event_id = f"scada-{int(now.timestamp() * 1000)}"
            self._node_result["Dispatch/Last Event ID"] = event_id
            intake.dispatch(
                _json(
                    {
                        "event_id": event_id,
                        "kind": "limit",
                        "target_kw": metric.value,
                        "program": "SCADA",
                        "issued_at": now,
                    }
                ),
                SOURCE,
                SOURCE,
            )
        elif metric.name == "Dispatch/Release" and metric.value is True:
            for record in self._service.events.live:
                if self._scada_event(record.event_id):
                    self._node_result["Dispatch/Last Event ID"] = record.event_id
                    intake.dispatch(
                        _json({"event_id": record.event_id, "kind": "release", "issued_at": now}),
                        SOURCE,
                        SOURCE,
                    )
        elif metric.name == "Grid/Emergency Level":
            self._grid_pending = True
            try:
                grid.emergency(
                    _json({"level": metric.value, "issued_at": now, "source": "SCADA"}),
                    SOURCE,
                    SOURCE,
                )
            finally:
                self._grid_pending = False

    def _class_command(self, class_name: str, metric: Metric) -> None:
        now = self._clock()
        known = {c.name for c in self._service.shell.fleet.classes}
        spec = SPECS.get(metric.name)
        if class_name not in known:
            self._refused(None, metric, f"no load class {safe_text(class_name, 64)}")
            return
        if spec is None or not spec.writable or spec not in CLASS_METRICS:
            self._refused(class_name, metric, f"{metric.name} is not a writable class metric")
            return
        if not self._accept:
            self._refused(class_name, metric, "commands are off (sparkplug.accept_commands)")
            return
        if metric.name == "Override/Minutes":
            value = metric.value
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10_080:
                self._refused(class_name, metric, "Override/Minutes must be 1 to 10080")
                return
            self._minutes[class_name] = value
            self._class_result[class_name] = {
                "Override/Last Status": "accepted",
                "Override/Last Reason": f"next override lasts {value} min",
            }
            return
        override_id = f"scada-{class_name}"
        minutes = self._minutes.get(class_name, DEFAULT_OVERRIDE_MIN)
        message: dict[str, Any] = {
            "override_id": override_id,
            "class": class_name,
            "issued_by": "SCADA",
            "issued_at": now,
        }
        if metric.name == "Override/Limit kW":
            value = metric.value
            kw = (
                float(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else value
            )
            message |= {"action": "limit", "limit_kw": kw}
        else:
            message["action"] = metric.value
        if message["action"] != "clear":
            message["expires_at"] = now + timedelta(minutes=minutes)
        self._service.intake.override(_json(message), SOURCE, SOURCE)

    def _refused(self, class_name: str | None, metric: Metric, reason: str) -> None:
        """A write that never reached the intake: shown on its node or device; audited and
        logged within a budget (a flood of refusals must not fill the disk or the journal:
        beyond it they are counted, gridflex_messages_total{topic="sparkplug/command",
        outcome="refused"})."""
        name = safe_text(metric.name, 64)  # the sender's text: escaped and cut short
        self._service.metrics.messages.labels(topic="sparkplug/command", outcome="refused").inc()
        if self._refusals.allow("sparkplug/refused"):
            self._service.store.audit(self._clock(), "sparkplug-rejected", name,
                                      {"reason": reason, "device": class_name}, SOURCE)  # fmt: skip
            log.warning("Sparkplug write %s refused: %s", name, reason)
        if class_name is None:
            prefix = "Grid" if metric.name.startswith("Grid/") else "Dispatch"
            self._node_result |= {
                f"{prefix}/Last Status": "rejected",
                f"{prefix}/Last Reason": reason,
            }
        else:
            self._class_result[class_name] = {
                "Override/Last Status": "rejected",
                "Override/Last Reason": reason,
            }
        self.report_now()

    def _scada_event(self, event_id: str) -> bool:
        """Whether SCADA wrote the event: its owner, stored with it (`sparkplug/...`)."""
        record = self._service.events.get(event_id)
        return record is not None and record.source.split("/", 1)[0] == SOURCE

    def _heard(self, topic: str, ack: BaseModel) -> None:
        """Every ack the service sends: the ones about SCADA's writes become metrics."""
        data = ack.model_dump()
        event_id = str(data.get("event_id"))
        last = self._node_result["Dispatch/Last Event ID"]
        if topic == "dispatch/ack" and (event_id == last or self._scada_event(event_id)):
            if data["event_id"] == self._node_result["Dispatch/Last Event ID"]:
                self._node_result |= {
                    "Dispatch/Last Status": data["status"],
                    "Dispatch/Last Reason": data["reason"],
                }
        elif topic == "override/ack" and str(data.get("override_id")).startswith("scada-"):
            name = str(data["override_id"]).removeprefix("scada-")
            self._class_result[name] = {
                "Override/Last Status": data["status"],
                "Override/Last Reason": data["reason"],
            }
        elif topic == "grid/ack" and self._grid_pending:
            self._node_result |= {
                "Grid/Last Status": data["status"],
                "Grid/Last Reason": data["reason"],
            }
        else:
            return
        self.report_now()


def _metric(spec: MetricSpec, value: Value) -> Metric:
    if isinstance(value, float) and math.isnan(value):
        value = None
    if spec.datatype is DataType.DOUBLE and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    properties = {} if spec.unit is None else {"engUnit": spec.unit}
    return Metric(spec.name, spec.datatype, value, properties)


def _summary(event: Mapping[str, Any]) -> str:
    c = event["compliance"]
    record = "" if not c else f", {c['compliant_cycles']}/{c['cycles']} cycles compliant"
    ask = f"{event['kind']} {event['requested_kw']:g} kW"
    return f"{event['event_id']} {event['status']} {ask}{record}"


def _json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, default=_iso).encode()


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")

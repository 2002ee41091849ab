"""Answers about single devices: `<prefix>/decision/request` -> `<prefix>/decision/device`.

Decision messages are compact (groups of devices by rule, class and reason); an operator or a
SCADA screen that wants one device's own setpoint, the rule and reason behind it, its last
reading and whether it is settling asks for it by id. A request that cannot be read is answered
with its error, never dropped silently.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
from pydantic import ValidationError

from agent.policy import Rule
from agent.service.cycle import Shell
from agent.service.messages import DeviceAnswer, DeviceQuery, DeviceSetpoint

__all__ = ["answer_device_query"]

MAX_QUERY_BYTES = 64 * 1024


def answer_device_query(shell: Shell, payload: bytes, now: datetime) -> DeviceAnswer:
    if len(payload) > MAX_QUERY_BYTES:
        return _refused(now, f"request larger than {MAX_QUERY_BYTES} bytes")
    try:
        query = DeviceQuery.model_validate(json.loads(payload))
    except (ValueError, RecursionError) as exc:  # bad JSON, or a schema violation
        reason = _first_error(exc) if isinstance(exc, ValidationError) else "bad JSON"
        return _refused(now, reason)
    last = shell.last
    fleet, devices = shell.fleet, shell.devices
    answers, unknown = [], []
    for device_id in query.device_ids:
        i = fleet.index_of.get(device_id)
        if i is None:
            unknown.append(device_id)
            continue
        measured = float(devices.measured_kw[i])
        kw, rule, reason = 0.0, "", "no decision yet"
        if last is not None:
            d = last.decision
            kw, rule = float(d.setpoint_kw[i]), Rule(int(d.rule[i])).label
            reason = d.reasons[int(d.reason_index[i])]
        answers.append(
            DeviceSetpoint(
                device_id=device_id,
                kw=round(kw, 3),
                rule=rule,
                reason=reason,
                load_class=fleet.classes[int(fleet.class_index[i])].name,
                measured_kw=None if np.isnan(measured) else round(measured, 3),
                state=devices.state_of(i),
            )
        )
    return DeviceAnswer(at=now, request_id=query.request_id, devices=answers, unknown=unknown)


def _refused(now: datetime, reason: str) -> DeviceAnswer:
    return DeviceAnswer(at=now, request_id=None, devices=[], unknown=[], error=reason)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg']}"

"""Sparkplug B payloads in and out, with the protobuf runtime (sparkplug_b.proto).

A metric is a name, a Sparkplug datatype and a value; `None` is sent as `is_null`. Integers
go in `int_value` (up to 32 bits) or `long_value` (64 bits, DateTime), signed ones as two's
complement, as section 6.4.16 of the specification says. Births carry each metric's datatype;
data messages do not (the specification: NDATA, DDATA and commands SHOULD NOT), so a host reads
their types from the births. Decoding a host's command turns every value back to Python; a
command metric without a datatype (as Eclipse Tahu's host sends every command) takes the type
its birth declared, and one the births do not declare, or a payload that is not Sparkplug B,
raises PayloadError. A value in a field that does not fit the declared type is kept as sent,
for the intake to refuse with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from google.protobuf.message import DecodeError

from adapters.scada import sparkplug_b_pb2 as pb

__all__ = ["DataType", "Decoded", "Metric", "PayloadError", "Value", "decode", "encode"]

Value = bool | int | float | str | None


class DataType(IntEnum):
    """The Sparkplug datatypes gridflex uses (values from the specification's DataType enum)."""

    INT32 = 3
    INT64 = 4
    UINT64 = 8
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13


_INT32 = {DataType.INT32}
# where each datatype's value travels (a float_value is accepted for a Double)
_FIELDS = {
    DataType.INT32: {"int_value"},
    DataType.INT64: {"long_value"},
    DataType.UINT64: {"long_value"},
    DataType.DATETIME: {"long_value"},
    DataType.DOUBLE: {"double_value", "float_value"},
    DataType.BOOLEAN: {"boolean_value"},
    DataType.STRING: {"string_value"},
}
_LONG = {DataType.INT64, DataType.UINT64, DataType.DATETIME}


class PayloadError(ValueError):
    """Bytes that are not a Sparkplug B payload, or a metric whose value does not fit its type."""


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    datatype: DataType
    value: Value
    properties: dict[str, str] = field(default_factory=dict)  # e.g. engUnit: kW
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    timestamp_ms: int | None
    seq: int | None
    metrics: list[Metric]


def encode(metrics: list[Metric], *, timestamp_ms: int, seq: int | None,
           datatypes: bool = True) -> bytes:  # fmt: skip
    """`datatypes`: for births and deaths; data messages go without (their births declared)."""
    payload = pb.Payload(timestamp=timestamp_ms)
    if seq is not None:
        payload.seq = seq
    for metric in metrics:
        out = payload.metrics.add(name=metric.name, timestamp=metric.timestamp_ms or timestamp_ms)
        if datatypes:
            out.datatype = int(metric.datatype)
        for key, text in metric.properties.items():
            out.properties.keys.append(key)
            out.properties.values.add(type=int(DataType.STRING), string_value=text)
        _set_value(out, metric)
    return payload.SerializeToString()


def _set_value(out: pb.Payload.Metric, metric: Metric) -> None:
    value, kind = metric.value, metric.datatype
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        out.is_null = True
    elif kind is DataType.BOOLEAN:
        out.boolean_value = bool(value)
    elif kind is DataType.STRING:
        out.string_value = str(value)
    elif kind is DataType.DOUBLE:
        out.double_value = float(value)
    elif kind in _INT32:
        out.int_value = int(value) & 0xFFFF_FFFF
    elif kind in _LONG:
        out.long_value = int(value) & 0xFFFF_FFFF_FFFF_FFFF
    else:  # pragma: no cover - DataType holds only the kinds above
        raise PayloadError(f"{metric.name}: datatype {kind} is not written by gridflex")


def decode(data: bytes, declared: Mapping[str, DataType] | None = None) -> Decoded:
    """`declared`: each metric's type as the births declared it, for metrics sent without."""
    payload = pb.Payload()
    try:
        payload.ParseFromString(data)
    except DecodeError as exc:
        raise PayloadError(f"not a Sparkplug B payload: {exc}") from None
    metrics = [_metric(m, declared or {}) for m in payload.metrics]
    return Decoded(
        timestamp_ms=payload.timestamp if payload.HasField("timestamp") else None,
        seq=payload.seq if payload.HasField("seq") else None,
        metrics=metrics,
    )


def _metric(m: pb.Payload.Metric, declared: Mapping[str, DataType]) -> Metric:
    stamp = m.timestamp if m.HasField("timestamp") else None
    held = m.WhichOneof("value")
    if not m.HasField("datatype") or m.datatype == 0:
        # no datatype: the one its birth declared (a Tahu host strips them from commands)
        kind = declared.get(m.name)
        if kind is None:
            raise PayloadError(f"{m.name}: sent without a datatype, and no birth declares it")
        if held is not None and held not in _FIELDS[kind]:
            # kept as sent: the intake refuses it with its reason, reported in the next data
            return Metric(m.name, kind, _as_sent(m, held), timestamp_ms=stamp)
    else:
        try:
            kind = DataType(m.datatype)
        except ValueError:
            raise PayloadError(
                f"{m.name}: datatype {m.datatype} is not one gridflex accepts"
            ) from None
    if m.is_null or held is None:
        return Metric(m.name, kind, None, timestamp_ms=stamp)
    if held not in _FIELDS[kind]:
        raise PayloadError(f"{m.name}: a {kind.name} value sent in {held}")
    value: Value
    if kind is DataType.BOOLEAN:
        value = m.boolean_value
    elif kind is DataType.STRING:
        value = m.string_value
    elif kind is DataType.DOUBLE:
        value = m.double_value if m.WhichOneof("value") == "double_value" else m.float_value
    elif kind in _INT32:
        raw = m.int_value
        value = raw - (1 << 32) if raw >= 1 << 31 else raw
    else:
        raw = m.long_value
        signed = kind is DataType.INT64 and raw >= 1 << 63
        value = raw - (1 << 64) if signed else raw
    return Metric(m.name, kind, value, timestamp_ms=stamp)


def _as_sent(m: pb.Payload.Metric, held: str) -> Value:
    """A value as its field holds it (bytes and extensions: not a value gridflex takes)."""
    if held in {"boolean_value", "string_value", "double_value", "float_value"}:
        value: Value = getattr(m, held)
        return value
    if held in {"int_value", "long_value"}:
        return int(getattr(m, held))
    raise PayloadError(f"{m.name}: a value sent in {held}")

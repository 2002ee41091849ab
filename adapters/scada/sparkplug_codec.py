"""Sparkplug B payloads in and out, with the protobuf runtime (sparkplug_b.proto).

A metric is a name, a Sparkplug datatype and a value; `None` is sent as `is_null`. Integers
go in `int_value` (up to 32 bits) or `long_value` (64 bits, DateTime), signed ones as two's
complement, as section 6.4.16 of the specification says. Decoding a host's command turns every
value back to Python, and a payload that is not Sparkplug B raises PayloadError.
"""

from __future__ import annotations

import math
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


def encode(metrics: list[Metric], *, timestamp_ms: int, seq: int | None) -> bytes:
    payload = pb.Payload(timestamp=timestamp_ms)
    if seq is not None:
        payload.seq = seq
    for metric in metrics:
        out = payload.metrics.add(name=metric.name, datatype=int(metric.datatype),
                                  timestamp=metric.timestamp_ms or timestamp_ms)  # fmt: skip
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


def decode(data: bytes) -> Decoded:
    payload = pb.Payload()
    try:
        payload.ParseFromString(data)
    except DecodeError as exc:
        raise PayloadError(f"not a Sparkplug B payload: {exc}") from None
    metrics = [_metric(m) for m in payload.metrics]
    return Decoded(
        timestamp_ms=payload.timestamp if payload.HasField("timestamp") else None,
        seq=payload.seq if payload.HasField("seq") else None,
        metrics=metrics,
    )


def _metric(m: pb.Payload.Metric) -> Metric:
    try:
        kind = DataType(m.datatype)
    except ValueError:
        raise PayloadError(f"{m.name}: datatype {m.datatype} is not one gridflex accepts") from None
    stamp = m.timestamp if m.HasField("timestamp") else None
    held = m.WhichOneof("value")
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

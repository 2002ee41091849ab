"""Register encodings: engineering values <-> raw 16-bit Modbus words, per the profile."""

from __future__ import annotations

import struct

from adapters.devices.profile import Encoding, Register

__all__ = ["decode", "encode"]

_STRUCT = {
    Encoding.UINT16: "H",
    Encoding.INT16: "h",
    Encoding.UINT32: "I",
    Encoding.INT32: "i",
    Encoding.FLOAT32: "f",
}


def decode(register: Register, words: list[int]) -> float:
    """The value in the register's unit: raw (in the profile's word order) times scale."""
    if register.encoding is Encoding.BOOL:
        return 1.0 if words[0] else 0.0
    ordered = words if register.word_order == "big" else list(reversed(words))
    raw_bytes = b"".join(word.to_bytes(2, "big") for word in ordered)
    (raw,) = struct.unpack(">" + _STRUCT[register.encoding], raw_bytes)
    return float(raw) * register.scale


def encode(register: Register, value: float) -> list[int]:
    """Raw words for `value` (in the register's unit); integers round to the nearest step.

    Raises ValueError when the value does not fit the encoding: never clamp silently.
    """
    if register.encoding is Encoding.BOOL:
        return [1 if value else 0]
    raw_value = value / register.scale
    fmt = ">" + _STRUCT[register.encoding]
    try:
        packed = struct.pack(fmt, raw_value if fmt[-1] == "f" else round(raw_value))
    except struct.error as exc:
        raise ValueError(f"{value} does not fit {register.encoding}: {exc}") from exc
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    return words if register.word_order == "big" else list(reversed(words))

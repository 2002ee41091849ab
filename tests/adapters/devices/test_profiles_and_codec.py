"""Device profiles as data (every shipped one loads, broken ones report every problem) and the
register codec (encodings, word order, range checks)."""

from __future__ import annotations

import struct

import pytest

from adapters.devices.codec import decode, encode
from adapters.devices.profile import (
    Encoding,
    Register,
    Table,
    available_profiles,
    load_profile,
    parse_profile,
)
from agent.errors import ConfigError


@pytest.mark.parametrize("name", available_profiles())
def test_every_shipped_profile_loads_and_declares_a_capability(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert all(register.vendor_name for register in profile.registers.values())
    assert profile.readings.active_power is not None


def test_the_three_required_profiles_ship() -> None:
    assert {"rack_pdu_switched", "three_phase_meter", "load_controller_percent"} <= set(
        available_profiles()
    )


def test_a_broken_profile_reports_every_problem_at_once() -> None:
    text = """
name: broken
vendor: nobody
registers:
  power: {vendor_name: P, table: input, address: 10, encoding: float32}
  relay: {vendor_name: R, table: coil, address: 0, encoding: uint16}
actions:
  on_off: {register: power}
readings:
  active_power: {register: missing, unit: W}
"""
    with pytest.raises(ConfigError) as caught:
        parse_profile(text)
    message = str(caught.value)
    assert "registers.relay" in message  # a coil must be bool
    text_ok_registers = text.replace("encoding: uint16", "encoding: bool")
    with pytest.raises(ConfigError) as caught:
        parse_profile(text_ok_registers)
    message = str(caught.value)
    assert "read-only" in message
    assert "unknown register 'missing'" in message


@pytest.mark.parametrize(
    ("encoding", "word_order", "value"),
    [
        (Encoding.FLOAT32, "big", 3250.5),
        (Encoding.FLOAT32, "little", -12.25),
        (Encoding.INT32, "little", -123456),
        (Encoding.UINT32, "big", 70000),
        (Encoding.INT16, "big", -5),
        (Encoding.UINT16, "big", 65535),
    ],
)
def test_encodings_round_trip_in_both_word_orders(
    encoding: Encoding, word_order: str, value: float
) -> None:
    register = Register.model_validate(
        {
            "vendor_name": "r",
            "table": "holding",
            "address": 0,
            "encoding": encoding,
            "word_order": word_order,
        }
    )
    assert decode(register, encode(register, value)) == pytest.approx(value)


def test_word_order_puts_the_high_word_where_the_profile_says() -> None:
    big = Register(vendor_name="r", table=Table.HOLDING, address=0, encoding=Encoding.FLOAT32)
    little = big.model_copy(update={"word_order": "little"})
    high, low = struct.unpack(">HH", struct.pack(">f", 1.5))
    assert encode(big, 1.5) == [high, low]
    assert encode(little, 1.5) == [low, high]


def test_an_out_of_range_value_is_refused_not_clamped() -> None:
    register = Register(vendor_name="r", table=Table.HOLDING, address=0, encoding=Encoding.UINT16)
    with pytest.raises(ValueError, match="does not fit"):
        encode(register, 70000)


# --- pymodbus servers as devices -------------------------------------------------------------

"""Declarative Modbus device profiles: register maps as validated data (YAML under profiles/).

A profile names each register once, with the vendor's name beside its address, and says how the
agent's two verbs map onto it: *actions* (switch on/off, write a power setpoint in W, kW or %) and
*readings* (active power, running state). Devices with many identical channels (PDU outlets) give
each register a `channel_stride`: channel k (1-based) lives at `address + (k - 1) * channel_stride`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import ConfigError

__all__ = [
    "PROFILE_DIR",
    "Document",
    "Encoding",
    "OnOffAction",
    "PowerReading",
    "Profile",
    "Register",
    "SetpointAction",
    "StateReading",
    "Table",
    "VerifyPolicy",
    "available_profiles",
    "load_profile",
    "parse_profile",
]

PROFILE_DIR = Path(__file__).parent / "profiles"

_MAX_ADDRESS = 65535


class Table(StrEnum):
    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def is_bit(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def is_writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING)


class Encoding(StrEnum):
    BOOL = "bool"
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    FLOAT32 = "float32"

    @property
    def word_count(self) -> int:
        return 2 if self in (Encoding.UINT32, Encoding.INT32, Encoding.FLOAT32) else 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Register(_Strict):
    """One value on the device. `raw * scale` is the value in `unit`."""

    vendor_name: str = Field(min_length=1, description="the name in the vendor's register list")
    table: Table
    address: int = Field(ge=0, le=_MAX_ADDRESS, description="0-based protocol address")
    encoding: Encoding = Encoding.UINT16
    word_order: Literal["big", "little"] = "big"
    scale: float = Field(default=1.0, gt=0)
    unit: str = ""
    channel_stride: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _encoding_fits_table(self) -> Self:
        if self.table.is_bit != (self.encoding is Encoding.BOOL):
            raise ValueError(
                f"table {self.table} needs encoding "
                f"{'bool' if self.table.is_bit else 'a numeric type'}, got {self.encoding}"
            )
        return self

    def address_of(self, channel: int) -> int:
        return self.address + (channel - 1) * self.channel_stride

    @property
    def count(self) -> int:
        return self.encoding.word_count


class _RegisterRef(_Strict):
    # "register" in YAML; `ref` in code (BaseModel.register is pydantic's own ABC method)
    ref: str = Field(alias="register", min_length=1)


class OnOffAction(_RegisterRef):
    """Switch by writing `on_value` / `off_value` to a coil or holding register."""

    on_value: int = 1
    off_value: int = 0


class SetpointAction(_RegisterRef):
    """Write an absolute power setpoint in W, kW or percent of rated power."""

    unit: Literal["W", "kW", "percent"]
    min_value: float = Field(default=0.0, ge=0)
    max_value: float = Field(gt=0)


class Actions(_Strict):
    on_off: OnOffAction | None = None
    setpoint: SetpointAction | None = None


class PowerReading(_RegisterRef):
    unit: Literal["W", "kW"]


class StateReading(_RegisterRef):
    on_values: tuple[int, ...] = (1,)


class Readings(_Strict):
    active_power: PowerReading | None = None
    state: StateReading | None = None


class VerifyPolicy(_Strict):
    """How power follows a command on this device.

    `settle_s`: how long power may take to follow a command (the shell does not call a device
    disobedient before that). `off_max_w` and `limit_tolerance` are still accepted so that older
    profiles load, and no longer used: the shell judges every reading against the command's kW
    (agent/service/devices.py).
    """

    off_max_w: float = Field(default=25.0, ge=0)
    settle_s: float = Field(default=0.0, ge=0, le=60)
    limit_tolerance: float = Field(default=0.05, ge=0, le=1)


class RequestLimits(_Strict):
    """The most one request may carry, when the device accepts less than the protocol allows
    (Modbus v1.1b3: 1968 coils written, 2000 read; 123 registers written, 125 read)."""

    max_bits_per_request: int = Field(default=1968, ge=1, le=2000)
    max_registers_per_request: int = Field(default=123, ge=1, le=125)


class Document(_Strict):
    """The vendor document a profile's addresses come from, as a site engineer would find it."""

    title: str = Field(min_length=1)
    version: str = Field(min_length=1, description="document number, edition or firmware")
    date: str = Field(min_length=1, description="as printed, or 'not printed' when it is not")
    sections: str = ""  # where in the document the register table is
    url: str = ""


class Profile(_Strict):
    name: str = Field(min_length=1)
    vendor: str = Field(min_length=1)
    description: str = ""
    # where the addresses come from; None only for a layout no vendor publishes (say so in
    # `vendor`): the simulator's generic PDU, a PLC program written for the site
    document: Document | None = None
    channels: int = Field(default=1, ge=1, le=1024)
    registers: dict[str, Register]
    actions: Actions = Actions()
    readings: Readings = Readings()
    verify: VerifyPolicy = VerifyPolicy()
    limits: RequestLimits = RequestLimits()

    @model_validator(mode="after")
    def _references_resolve(self) -> Self:
        problems = [*self._action_problems(), *self._reading_problems(), *self._range_problems()]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _action_problems(self) -> list[str]:
        problems = []
        for kind, action in (("on_off", self.actions.on_off), ("setpoint", self.actions.setpoint)):
            if action is None:
                continue
            register = self.registers.get(action.ref)
            if register is None:
                problems.append(f"actions.{kind}: unknown register {action.ref!r}")
            elif not register.table.is_writable:
                problems.append(f"actions.{kind}: register {action.ref!r} is read-only")
            elif kind == "setpoint" and register.table.is_bit:
                problems.append("actions.setpoint: needs a holding register, not a coil")
        return problems

    def _reading_problems(self) -> list[str]:
        problems = []
        for kind, reading in (
            ("active_power", self.readings.active_power),
            ("state", self.readings.state),
        ):
            if reading is not None and reading.ref not in self.registers:
                problems.append(f"readings.{kind}: unknown register {reading.ref!r}")
        return problems

    def _range_problems(self) -> list[str]:
        return [
            f"registers.{name}: channel {self.channels} ends past address {_MAX_ADDRESS}"
            for name, register in self.registers.items()
            if register.address_of(self.channels) + register.count - 1 > _MAX_ADDRESS
        ]

    def register(self, name: str) -> Register:
        return self.registers[name]


def parse_profile(text: str, source: str = "<string>") -> Profile:
    """Validate one profile; every problem is reported at once with its field path."""
    try:
        data = yaml.safe_load(text)
        return Profile.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile {source}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"profile {source}: {exc}") from exc


def available_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))


@cache
def load_profile(name: str) -> Profile:
    """A shipped profile by name (file stem), or a path to a profile file of the site's own
    (ending .yaml or .yml: a path is never taken for a name, nor a name for a path)."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
    elif re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        path = PROFILE_DIR / f"{name}.yaml"
    else:
        raise ConfigError(f"profile {name!r} is neither a shipped profile's name nor a path "
                          "to a .yaml file")  # fmt: skip
    if not path.is_file():
        raise ConfigError(f"no device profile {name!r}; shipped: {', '.join(available_profiles())}")
    return parse_profile(path.read_text(encoding="utf-8"), source=str(path))

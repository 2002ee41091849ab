"""Which driver controls a device, and at which address (pydantic models, part of the site file).

A device entry with `count: N` is a group of N identical devices; `expand()` derives each member's
address from the group's template so a 5,000-miner site stays a few dozen lines of YAML.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

__all__ = [
    "DriverConfig",
    "GpuNodeDriverConfig",
    "MinerDriverConfig",
    "ModbusDriverConfig",
    "MqttDriverConfig",
    "SimulatedDriverConfig",
    "expand",
]


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")  # fmt: skip


def _host(value: str) -> str:
    """An IP address or a host name (RFC 1123); `127.0.0.999` is neither."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value) or not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is neither an IP address nor a host name")
    return value


Host = Annotated[str, AfterValidator(_host)]


def _long_key(key: SecretStr) -> SecretStr:
    if len(key.get_secret_value().encode()) < 32:
        raise ValueError("must be at least 32 bytes (a short key can be guessed)")
    return key


DeviceKey = Annotated[SecretStr, AfterValidator(_long_key)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _offset_host(host: str, offset: int) -> str:
    """Member k of a group sits `offset` addresses after the group's first IPv4 address."""
    try:
        return str(ipaddress.IPv4Address(host) + offset)
    except ipaddress.AddressValueError:
        return host  # a host name: every member shares it (one endpoint, many unit ids/outlets)


class ModbusDriverConfig(_Strict):
    """A device behind Modbus TCP described by a profile under adapters/devices/profiles/."""

    type: Literal["modbus"]
    """`modbus`"""
    host: Host
    """the device's address (a group's members take the next addresses)"""
    port: int = Field(default=502, ge=1, le=65535)
    """Modbus TCP port"""
    unit_id: int = Field(default=1, ge=0, le=247)
    """the Modbus unit id"""
    profile: str = Field(min_length=1)
    """a shipped profile name or a path ending .yaml (docs/devices.md)"""
    channel: int = Field(default=1, ge=1, description="outlet / channel number within the device")
    channels_per_host: int | None = Field(
        default=None, ge=1, description="for groups: members fill a host's channels, then the next"
    )
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    """one request's timeout"""
    settle_s: float | None = Field(
        default=None, ge=0, le=600, description="overrides the profile's settle time"
    )

    def member(self, index: int) -> ModbusDriverConfig:
        if self.channels_per_host is None:
            return self.model_copy(update={"host": _offset_host(self.host, index)})
        host_index, channel_offset = divmod(index, self.channels_per_host)
        return self.model_copy(
            update={
                "host": _offset_host(self.host, host_index),
                "channel": self.channel + channel_offset,
            }
        )


class MinerDriverConfig(_Strict):
    """An ASIC miner reached through its firmware's API: LuxOS (CGMiner-style JSON on TCP 4028)
    or Braiins OS+ (its gRPC Public API on TCP 50051)."""

    type: Literal["miner"]
    """`miner`"""
    host: Host
    """the miner's address (a group's members take the next addresses)"""
    port: int | None = Field(default=None, ge=1, le=65535)
    """the firmware API's TCP port (default: 4028 for luxos, 50051 for braiins)"""
    # Two firmware APIs are spoken: LuxOS's dialect of the CGMiner API (logon, curtail,
    # powertargetset) and the Braiins OS+ Public API; other firmware would refuse every command.
    firmware: Literal["luxos", "braiins"] = "luxos"
    """the firmware's API: `luxos` or `braiins` (Braiins OS+, needs the `braiins` extra)"""
    username: str = Field(default="root", min_length=1)
    """braiins: the user the API logs in as"""
    password: SecretStr | None = None
    """braiins: that user's password (use ${ENV_VAR}; none: an empty password)"""
    timeout_s: float = Field(default=2.0, gt=0, le=30)
    """one request's timeout"""
    # A sleeping miner's hashboards stop within seconds, its fans and PSU settle over tens of
    # seconds; waking re-tunes the boards for longer. Overridable for firmware that is slower.
    settle_s: float = Field(
        default=20.0, ge=0, le=600, description="power settles this long after a command"
    )

    @property
    def api_port(self) -> int:
        if self.port is not None:
            return self.port
        return 50051 if self.firmware == "braiins" else 4028

    def member(self, index: int) -> MinerDriverConfig:
        return self.model_copy(update={"host": _offset_host(self.host, index)})


class MqttDriverConfig(_Strict):
    """A device that takes an absolute setpoint on an MQTT topic and echoes its state on another."""

    type: Literal["mqtt"]
    """`mqtt`"""
    command_topic: str = Field(min_length=1)
    """where setpoints are published ({k}: the member's number)"""
    state_topic: str = Field(min_length=1)
    """where the device echoes its state ({k}: the member's number)"""
    echo_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """no echo within this long: the command failed"""
    settle_s: float = Field(
        default=5.0, ge=0, le=600, description="power settles this long after a command"
    )
    hmac_key: DeviceKey | None = Field(
        default=None,
        description="sign setpoints and accept only signed, fresh states (32+ bytes; for "
        "`gridflex node`, the key given to it)",
    )

    def member(self, index: int) -> MqttDriverConfig:
        k = str(index + 1)
        return self.model_copy(
            update={
                "command_topic": self.command_topic.replace("{k}", k),
                "state_topic": self.state_topic.replace("{k}", k),
            }
        )


class GpuNodeDriverConfig(_Strict):
    """A GPU server running `gridflex node`, reached over MQTT by its node id."""

    type: Literal["gpu_node"]
    """`gpu_node`"""
    node_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.{}-]+$")
    """the id `gridflex node` runs with ({k}: the member's number)"""
    echo_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """no echo within this long: the command failed"""
    # NVML applies a power limit within a second or two; the board's draw follows the workload
    settle_s: float = Field(
        default=5.0, ge=0, le=600, description="power settles this long after a command"
    )
    hmac_key: DeviceKey | None = Field(
        default=None,
        description="sign setpoints and accept only signed, fresh states (32+ bytes; for "
        "`gridflex node`, the key given to it)",
    )

    def member(self, index: int) -> GpuNodeDriverConfig:
        return self.model_copy(update={"node_id": self.node_id.replace("{k}", str(index + 1))})


class SimulatedDriverConfig(_Strict):
    """An in-process simulated load (demo, tests): obeys after `lag_s`."""

    type: Literal["simulated"]
    """`simulated`"""
    lag_s: float = Field(default=0.0, ge=0, le=60)
    """obeys this long after a command"""
    stuck: bool = Field(
        default=False, description="accepts every command but keeps drawing full power (demo)"
    )

    def member(self, index: int) -> SimulatedDriverConfig:
        del index
        return self


DriverConfig = Annotated[
    ModbusDriverConfig
    | MinerDriverConfig
    | MqttDriverConfig
    | GpuNodeDriverConfig
    | SimulatedDriverConfig,
    Field(discriminator="type"),
]


def expand(driver: DriverConfig, index: int) -> DriverConfig:
    """The driver address of member `index` (0-based) of a device group."""
    return driver.member(index)

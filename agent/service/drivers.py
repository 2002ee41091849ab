"""Build a DeviceDriver for every configured device address (the composition of adapters).

Every driver type of the site file is built here, explicitly: Modbus over the pooled connections,
LuxOS/CGMiner miners over their firmware API, MQTT devices and GPU nodes over the service's one
MQTT session, simulated loads on the service's clock. Miners also get their drift check, which
the shell uses to re-send a command a miner has forgotten (reboot, auto-tuning).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from adapters.devices.miners import MinerDriver, drifted
from adapters.devices.modbus import ModbusDriver
from adapters.devices.mqtt_device import MqttDriver
from adapters.devices.profile import Profile, load_profile
from adapters.devices.simulated import SimulatedDriver
from adapters.transport.modbus_pool import ModbusPool
from adapters.transport.mqtt_session import MqttSession
from agent.config import SiteConfig
from agent.config_drivers import (
    DriverConfig,
    GpuNodeDriverConfig,
    MinerDriverConfig,
    ModbusDriverConfig,
    MqttDriverConfig,
    SimulatedDriverConfig,
)
from agent.errors import ConfigError
from agent.ports import DeviceDriver
from agent.service.shell import DriftCheck

__all__ = ["SiteDrivers", "build_drivers", "needing_mqtt"]

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class SiteDrivers:
    drivers: dict[str, DeviceDriver] = field(default_factory=dict)
    drift_checks: dict[str, DriftCheck] = field(default_factory=dict)


def needing_mqtt(addresses: Mapping[str, DriverConfig]) -> list[str]:
    """The devices reached over MQTT (MQTT setpoint devices and `gridflex node` GPU servers)."""
    return [
        device_id
        for device_id, address in addresses.items()
        if isinstance(address, MqttDriverConfig | GpuNodeDriverConfig)
    ]


def build_drivers(
    config: SiteConfig, pool: ModbusPool, *, mqtt: MqttSession | None, clock: Clock
) -> SiteDrivers:
    """Drivers by device id. A device reached over MQTT in a site without an MQTT connection is a
    configuration error, raised here (at start) with the devices named."""
    addresses = config.device_drivers()
    problems = _problems(addresses, has_mqtt=mqtt is not None)
    if problems:
        raise ConfigError("the site's devices cannot all be driven:\n" + "\n".join(problems))
    rated_kw = {spec.device_id: spec.rated_kw for spec in config.device_specs()}
    profiles: dict[str, Profile] = {}
    built = SiteDrivers()
    for device_id, address in addresses.items():
        match address:
            case ModbusDriverConfig():
                profile = profiles.get(address.profile)
                if profile is None:
                    profile = profiles[address.profile] = load_profile(address.profile)
                driver: DeviceDriver = ModbusDriver(device_id, address, pool, profile=profile)
            case MinerDriverConfig():
                driver = MinerDriver(device_id, address, clock=clock)
                built.drift_checks[device_id] = drifted
            case MqttDriverConfig() | GpuNodeDriverConfig():
                assert mqtt is not None  # checked in _problems
                driver = MqttDriver(device_id, address, mqtt, clock=clock)
            case SimulatedDriverConfig():
                driver = SimulatedDriver(device_id, address, rated_kw=rated_kw[device_id],
                                         clock=clock)  # fmt: skip
        built.drivers[device_id] = driver
    return built


def _problems(addresses: Mapping[str, DriverConfig], *, has_mqtt: bool) -> list[str]:
    problems = []
    if not has_mqtt and (over_mqtt := needing_mqtt(addresses)):
        problems.append(
            f"  {len(over_mqtt)} device(s) are reached over MQTT but the site file has no `mqtt` "
            f"section: {_names(over_mqtt)}"
        )
    # miners.py speaks the LuxOS dialect of the CGMiner API (logon, curtail, profileset); other
    # firmware would refuse every command, so say so now rather than fail every cycle
    other: dict[str, list[str]] = {}
    for device_id, address in addresses.items():
        if isinstance(address, MinerDriverConfig) and address.firmware != "luxos":
            other.setdefault(address.firmware, []).append(device_id)
    for firmware, device_ids in other.items():
        problems.append(
            f"  {len(device_ids)} miner(s) run {firmware} firmware, which this build cannot drive "
            f"(LuxOS only): {_names(device_ids)}"
        )
    return problems


def _names(device_ids: list[str], shown: int = 10) -> str:
    more = len(device_ids) - shown
    return ", ".join(device_ids[:shown]) + (f" and {more} more" if more > 0 else "")

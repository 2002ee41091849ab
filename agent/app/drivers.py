"""Build a DeviceDriver for every configured device address (the composition of adapters).

Every driver type of the site file is built here, explicitly: Modbus over the pooled connections,
LuxOS/CGMiner and Braiins OS+ miners over their firmware APIs, MQTT devices and GPU nodes over
the service's one MQTT session, simulated loads on the service's clock. Miners also get their
drift check, which the shell uses to re-send a command a miner has forgotten (reboot,
auto-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.devices.miners import MinerDriver, drifted
from adapters.devices.modbus import ModbusDriver
from adapters.devices.modbus_batch import ModbusEndpoint
from adapters.devices.mqtt_device import MqttDriver
from adapters.devices.profile import Profile, load_profile
from adapters.sim.simulated import SimulatedDriver
from adapters.transport.modbus_pool import ModbusPool, ModbusTarget
from adapters.transport.mqtt_session import MqttSession
from agent.config import SiteConfig
from agent.config.drivers import (
    GpuNodeDriverConfig,
    MinerDriverConfig,
    ModbusDriverConfig,
    MqttDriverConfig,
    SimulatedDriverConfig,
)
from agent.domain.fleet import DeviceSpec
from agent.errors import ConfigError
from agent.ports import Clock, DeviceDriver
from agent.service.cycle import DriftCheck

__all__ = ["SiteDrivers", "build_drivers"]


@dataclass(frozen=True, slots=True)
class SiteDrivers:
    drivers: dict[str, DeviceDriver] = field(default_factory=dict)
    drift_checks: dict[str, DriftCheck] = field(default_factory=dict)


def build_drivers(
    config: SiteConfig, pool: ModbusPool, *, mqtt: MqttSession | None, clock: Clock
) -> SiteDrivers:
    """Drivers by device id. The site file has been validated: a device reached over MQTT comes
    with an `mqtt` section (agent.config checks it), so its session must be passed in."""
    specs: dict[str, DeviceSpec] = {}  # for simulated loads only, built when first needed
    profiles: dict[str, Profile] = {}
    endpoints: dict[tuple[str, int, int, str], ModbusEndpoint] = {}
    built = SiteDrivers()
    for device_id, address in config.iter_device_drivers():
        match address:
            case ModbusDriverConfig():
                profile = profiles.get(address.profile)
                if profile is None:
                    profile = profiles[address.profile] = load_profile(address.profile)
                key = (address.host, address.port, address.unit_id, address.profile)
                endpoint = endpoints.get(key)
                if endpoint is None:  # the outlets of one PDU: commanded and read together
                    target = ModbusTarget(device_id, address.host, address.port,
                                          address.unit_id, address.timeout_s)  # fmt: skip
                    endpoint = endpoints[key] = ModbusEndpoint(pool, target, profile, clock)
                driver: DeviceDriver = ModbusDriver(device_id, address, pool, profile=profile,
                                                    clock=clock, endpoint=endpoint)  # fmt: skip
            case MinerDriverConfig(firmware="braiins"):
                driver = _braiins_miner(device_id, address, clock)
                built.drift_checks[device_id] = drifted
            case MinerDriverConfig():
                driver = MinerDriver(device_id, address, clock=clock)
                built.drift_checks[device_id] = drifted
            case MqttDriverConfig() | GpuNodeDriverConfig():
                if mqtt is None:
                    raise ConfigError(f"{device_id} is reached over MQTT: no MQTT session given")
                driver = MqttDriver(
                    device_id, address, mqtt, clock=clock, prefix=config.topic_prefix
                )
            case SimulatedDriverConfig():
                specs = specs or {spec.device_id: spec for spec in config.device_specs()}
                spec = specs[device_id]
                driver = SimulatedDriver(device_id, address, rated_kw=spec.rated_kw,
                                         idle_kw=spec.idle_kw, clock=clock)  # fmt: skip
        built.drivers[device_id] = driver
    return built


def _braiins_miner(device_id: str, address: MinerDriverConfig, clock: Clock) -> DeviceDriver:
    try:
        from adapters.devices.braiins_miner import BraiinsMiner  # noqa: PLC0415 - optional extra
    except ImportError as exc:  # grpcio is the `braiins` extra
        raise ConfigError(
            f"{device_id}: firmware braiins needs grpcio: pip install 'gridflex[braiins]' ({exc})"
        ) from exc
    return BraiinsMiner(device_id, address, clock=clock)

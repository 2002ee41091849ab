"""Build a DeviceDriver for every configured device address (the composition of adapters)."""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Mapping

from adapters.devices.modbus import ModbusDriver
from adapters.devices.profile import Profile, load_profile
from adapters.transport.modbus_pool import ModbusPool
from agent.config_drivers import DriverConfig, ModbusDriverConfig
from agent.ports import DeviceDriver

__all__ = ["build_drivers"]

log = logging.getLogger("gridflex.drivers")


def build_drivers(
    addresses: Mapping[str, DriverConfig], pool: ModbusPool
) -> tuple[dict[str, DeviceDriver], dict[str, str]]:
    """Drivers by device id, and the devices left without one with the reason (logged once)."""
    profiles: dict[str, Profile] = {}
    drivers: dict[str, DeviceDriver] = {}
    missing: dict[str, str] = {}
    for device_id, address in addresses.items():
        if isinstance(address, ModbusDriverConfig):
            profile = profiles.get(address.profile)
            if profile is None:
                profile = profiles[address.profile] = load_profile(address.profile)
            drivers[device_id] = ModbusDriver(device_id, address, pool, profile=profile)
            continue
        driver = _other_driver(device_id, address)
        if driver is None:
            missing[device_id] = f"no {address.type} driver in this build: not commanded"
        else:
            drivers[device_id] = driver
    for why, count in Counter(missing.values()).items():
        log.error("%d device(s): %s", count, why)
    return drivers, missing


def _other_driver(device_id: str, address: DriverConfig) -> DeviceDriver | None:
    """Drivers the device engineer ships as `adapters.devices.<type>:build(device_id, config)`."""
    try:
        module = importlib.import_module(f"adapters.devices.{address.type}")
    except ImportError:
        return None
    build = getattr(module, "build", None)
    if build is None:
        return None
    driver = build(device_id, address)
    return driver if isinstance(driver, DeviceDriver) else None

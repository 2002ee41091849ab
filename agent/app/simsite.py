"""A simulated Modbus site for a site file: every Modbus address in it, served on loopback.

Used by `gridflex demo`, the service's end-to-end tests and bench/dispatch.py. It reads the
device groups' driver addresses and starts one simulated endpoint (adapters.devices.
sim_modbus_server) per (host, port), drawing each device's rated power while it runs.
"""

from __future__ import annotations

from collections import defaultdict

from adapters.devices.profile import load_profile
from adapters.sim.modbus_server import SimEndpoint, SimModbusSite
from agent.config import SiteConfig
from agent.config.drivers import ModbusDriverConfig

__all__ = ["endpoints_for", "sim_site_for"]


def endpoints_for(config: SiteConfig) -> list[SimEndpoint]:
    rated = {spec.device_id: spec.rated_kw for spec in config.device_specs()}
    by_endpoint: dict[tuple[str, int], list[tuple[str, ModbusDriverConfig]]] = defaultdict(list)
    for device_id, address in config.device_drivers().items():
        if isinstance(address, ModbusDriverConfig):
            by_endpoint[(address.host, address.port)].append((device_id, address))
    endpoints = []
    for (host, port), members in by_endpoint.items():
        profiles = {address.profile for _, address in members}
        if len(profiles) != 1:
            raise ValueError(f"{host}:{port} serves several profiles {sorted(profiles)}")
        ratings = {rated[device_id] for device_id, _ in members}
        if len(ratings) != 1:
            raise ValueError(f"{host}:{port} serves devices of different ratings {ratings}")
        profile = load_profile(profiles.pop())
        endpoints.append(SimEndpoint(host, port, profile, rated_w=ratings.pop() * 1000.0))
    return endpoints


def sim_site_for(config: SiteConfig) -> SimModbusSite:
    return SimModbusSite(endpoints_for(config))

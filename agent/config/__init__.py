"""The site file: typed models (site, drivers, openadr), how it is read (load) and how its
problems are reported (problems). Other packages import from here."""

from agent.config.drivers import (
    DriverConfig,
    GpuNodeDriverConfig,
    MinerDriverConfig,
    ModbusDriverConfig,
    MqttDriverConfig,
    SimulatedDriverConfig,
    expand,
)
from agent.config.load import load_config, parse_config
from agent.config.openadr import OpenAdrConfig, OpenAdrLevelConfig, OpenAdrSetpointConfig
from agent.config.problems import ConfigFileError, ConfigIssue
from agent.config.site import (
    DeviceConfig,
    FourCpConfig,
    LoadClassConfig,
    MqttConfig,
    PolicyConfig,
    PricesConfig,
    ServiceConfig,
    SiteConfig,
    SiteInfo,
    TlsConfig,
)

__all__ = [
    "ConfigFileError",
    "ConfigIssue",
    "DeviceConfig",
    "DriverConfig",
    "FourCpConfig",
    "GpuNodeDriverConfig",
    "LoadClassConfig",
    "MinerDriverConfig",
    "ModbusDriverConfig",
    "MqttConfig",
    "MqttDriverConfig",
    "OpenAdrConfig",
    "OpenAdrLevelConfig",
    "OpenAdrSetpointConfig",
    "PolicyConfig",
    "PricesConfig",
    "ServiceConfig",
    "SimulatedDriverConfig",
    "SiteConfig",
    "SiteInfo",
    "TlsConfig",
    "expand",
    "load_config",
    "parse_config",
]

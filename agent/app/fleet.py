"""The fleet link as the service runs it (docs/fleet.md): built only for a site file with a
`fleet` section, so a site without one needs no NATS library."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from agent.config import SiteConfig
from agent.errors import ConfigError
from agent.ports import Clock
from agent.service.outbox import ConfirmedPublisher

if TYPE_CHECKING:
    from agent.app.assembly import Service
    from agent.app.fleet_link import FleetLink, TeePublisher

__all__ = ["fleet_link", "run_fleet", "tee"]


def fleet_link(config: SiteConfig) -> FleetLink:
    try:
        from agent.app.fleet_link import FleetLink  # noqa: PLC0415 - the optional extra
    except ImportError as exc:
        raise ConfigError(f"the site file has a fleet section, but {exc.name} is not installed: "
                          "pip install 'gridflex[fleet]'") from None  # fmt: skip
    assert config.fleet_bus is not None
    return FleetLink(config.fleet_bus, config.site.id)


def tee(first: ConfirmedPublisher, fleet: FleetLink) -> TeePublisher:
    """The MQTT link and the fleet link as the one publisher of the site's outbox."""
    from agent.app.fleet_link import TeePublisher  # noqa: PLC0415

    return TeePublisher(first, fleet)


async def run_fleet(service: Service, fleet: FleetLink, clock: Clock) -> None:
    """Reach the site's NATS server, then publish what the site publishes and read the hub's
    commands, until cancelled."""
    from agent.service.fleet_commands import FleetCommands  # noqa: PLC0415

    config = service.config.fleet_bus
    assert config is not None
    send_ack = service.send_ack
    assert send_ack is not None
    keys = {k: v.get_secret_value().encode() for k, v in config.command_keys.items()}
    commands = FleetCommands(
        service.config.site.id, keys, service.store, dispatch=service.intake.dispatch,
        ack=lambda ack: send_ack("dispatch/ack", ack),
    )  # fmt: skip
    await fleet.start()

    def put(handle: Any) -> Any:
        return service.inbox.put("fleet", handle, acknowledged=True)

    await asyncio.gather(fleet.publish_state(), fleet.read_commands(commands, put, clock))

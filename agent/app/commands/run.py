"""`gridflex run --config SITE.yaml`: the service (systemd runs this)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from agent.config import load_config
from agent.errors import ConfigError

__all__ = ["run"]


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="the site file",
)
@click.option("--log-level", default="INFO", show_default=True)
def run(config_path: Path, log_level: str) -> None:
    """Run the demand-response service for one site until SIGTERM."""
    # journald adds its own timestamps; keep lines short and greppable
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s"
    )
    # pymodbus logs each failed request with a hex dump; the pool translates every failure into
    # the device's state, logged once per change, so its own lines are chatter unless debugging
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    from agent.app.preflight import database_problems  # noqa: PLC0415 - keep --help fast
    from agent.app.runner import run_service  # noqa: PLC0415

    for problem in database_problems(config.service.database):
        click.echo(problem, err=True)
        sys.exit(2)

    try:
        asyncio.run(run_service(config))
    except ConfigError as exc:  # found only when building the drivers (MQTT devices, no broker)
        click.echo(str(exc), err=True)
        sys.exit(2)

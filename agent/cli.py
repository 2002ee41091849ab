"""The `gridflex` command: the composition root. Sub-commands load lazily so `--help` stays fast."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import click

__all__ = ["main"]

# name -> "module:attribute" of a click command. Each module wires adapters to the core.
_COMMANDS: dict[str, str] = {
    "backtest": "agent.app.commands.backtest:backtest",
    "audit": "agent.app.commands.events:audit",
    "demo": "agent.app.commands.demo:demo",
    "events": "agent.app.commands.events:events",
    "fleet": "agent.app.commands.fleet:fleet",
    "gpu-demand": "agent.app.commands.gpu_demand:gpu_demand",
    "run": "agent.app.commands.run:run",
    "send": "agent.app.commands.send:send",
    "shadow-report": "agent.app.commands.shadow_report:shadow_report",
    "check-config": "agent.app.commands.check_config:check_config",
    "node": "agent.app.commands.node:node",
    "prices": "agent.app.commands.prices:prices",
    "status": "agent.app.commands.status:status",
}
# What `gridflex --help` lists, without importing every command (pandas, pymodbus, paho...):
# the first line of each command's help, kept equal to it by tests/commands/test_cli_help.py.
SHORT_HELP: dict[str, str] = {
    "audit": "The audit log: every signal, decision, command and result, with when, why and "
    "from whom.",
    "backtest": "Replay the policy over a price history: what it would have curtailed and earned.",
    "check-config": "Validate a site file, and build what `gridflex run` builds at start.",
    "demo": "Run a simulated 263-device site through a real ERCOT day.",
    "events": "Dispatch events with their status, requested and achieved kW.",
    "fleet": "The fleet's hub: set up its streams, command a site, see every site.",
    "gpu-demand": "Scrape inference servers' /metrics pages and print the pool's demand as JSON "
    "lines.",
    "node": "Apply GPU power caps from MQTT setpoints on this server.",
    "prices": "ERCOT market prices for study and backtests.",
    "run": "Run the demand-response service for one site until SIGTERM.",
    "send": "Send a dispatch, release, override, clear or grid condition, signed, and print its "
    "ack.",
    "shadow-report": "Shadow mode: what the site drew against what gridflex would have "
    "commanded, per event.",
    "status": "What the running site is doing now: load against the ceiling, price, postures, "
    "devices down and live events.",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_COMMANDS])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attr = target.split(":")
        command: Any = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="gridflex")
@click.option("--env-file", type=click.Path(path_type=Path, dir_okay=False),
              help="read NAME=value lines into the environment first, as systemd's "
              "EnvironmentFile= does (e.g. /etc/gridflex/gridflex.env)")  # fmt: skip
@click.option("--user", "as_user", metavar="NAME",
              help="then run as this user (from root), as systemd's User= does")  # fmt: skip
def main(env_file: Path | None, as_user: str | None) -> None:
    """gridflex: demand response and curtailment for flexible data centers."""
    if env_file is None and as_user is None:
        return
    from agent.app.service_user import ServiceUserError, become, read_env_file  # noqa: PLC0415

    try:
        if env_file is not None:
            os.environ.update(read_env_file(env_file))
        if as_user is not None:
            become(as_user)
    except ServiceUserError as exc:
        raise click.UsageError(str(exc)) from None

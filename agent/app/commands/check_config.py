"""`gridflex check-config FILE`: validate a site file and summarise it on one screen."""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from agent.app.preflight import preflight
from agent.config import ConfigFileError, SiteConfig, load_config

__all__ = ["check_config", "summary_table"]


def summary_table(config: SiteConfig) -> Table:
    """Devices and kW per load class, with each class's breakeven price."""
    table = Table(title=f"site {config.site.id}: load classes", title_justify="left")
    for column in ("class", "priority", "devices", "rated kW", "breakeven $/MWh"):
        table.add_column(column, justify="left" if column in {"class", "priority"} else "right")
    devices_per_class: Counter[str] = Counter()
    kw_per_class: dict[str, float] = dict.fromkeys(config.classes, 0.0)
    for device in config.devices:
        devices_per_class[device.load_class] += device.count
        kw_per_class[device.load_class] = (
            kw_per_class.get(device.load_class, 0.0) + device.count * device.rated_kw
        )
    for name, load_class in config.classes.items():
        breakeven = load_class.breakeven_usd_per_mwh()
        if load_class.follows is not None:
            value = f"follows {load_class.follows}"
        else:
            value = "never curtailed" if math.isinf(breakeven) else f"{breakeven:,.2f}"
        table.add_row(
            name,
            load_class.priority.label,
            f"{devices_per_class[name]:,}",
            f"{kw_per_class[name]:,.1f}",
            value,
        )
    total_kw = sum(kw_per_class.values())
    table.add_section()
    table.add_row("total", "", f"{sum(devices_per_class.values()):,}", f"{total_kw:,.1f}", "")
    return table


def _site_lines(config: SiteConfig) -> list[str]:
    site = config.site
    limit = f"{site.import_limit_kw:,.0f} kW" if site.import_limit_kw else "none"
    driver_counts = Counter[str]()
    for device in config.devices:
        driver_counts[device.driver.type if device.driver else "none"] += device.count
    policy = config.policy
    mqtt = "not configured"
    if config.mqtt is not None:
        auth = " with password" if config.mqtt.password is not None else ""
        tls = " over TLS" if config.mqtt.tls is not None else ""
        mqtt = f"{config.mqtt.host}:{config.mqtt.port}{tls}{auth}, topics {config.topic_prefix}/..."
    return [
        f"site {site.id} ({site.iso} {site.settlement_point}, {site.timezone}), "
        f"import limit {limit}",
        "drivers: " + ", ".join(f"{n:,} {t}" for t, n in sorted(driver_counts.items())),
        f"policy: hysteresis {policy.hysteresis_usd_per_mwh:g} $/MWh, "
        f"dwell {policy.min_dwell_s:g} s, "
        f"stale after {policy.price_stale_after_s:g} s -> {policy.stale_posture.value}, "
        f"4CP {'on' if policy.fourcp else 'off'}",
        f"prices: {config.prices.source} {config.prices.market}; MQTT: {mqtt}",
    ]


@click.command("check-config")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--away", is_flag=True, help="checking the file away from its site: skip TLS "
              "files, credentials and the live price source; drivers and profiles are still "
              "built")  # fmt: skip
def check_config(file: Path, away: bool) -> None:
    """Validate a site file, and build what `gridflex run` builds at start (drivers, profiles,
    price source, TLS files). Exit 0 with a summary, or 2 listing every problem."""
    console = Console()
    try:
        config = load_config(file)
    except ConfigFileError as exc:
        err = Console(stderr=True, highlight=False)
        count = len(exc.issues)
        err.print(f"[bold red]{file}: {count} problem{'s' if count != 1 else ''}[/]", markup=True)
        for issue in exc.issues:
            err.print(f"  {issue}", markup=False, soft_wrap=True)
        sys.exit(2)
    problems = preflight(config, on_site_host=not away)  # what run would refuse at start
    if problems:
        err = Console(stderr=True, highlight=False)
        err.print(f"[bold red]{file}: {len(problems)} problem(s) at start[/]", markup=True)
        for problem in problems:
            err.print(f"  {problem}", markup=False, soft_wrap=True)
        sys.exit(2)
    console.print(summary_table(config))
    for line in _site_lines(config):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    for warning in config.warnings():
        console.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
    console.print(f"[green]OK[/]: {file}")

"""A small simulated site for the service tests: 2 PDUs of miners, 2 throttled tanks, controls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.config import SiteConfig, parse_config

SITE = """
site: {{id: t{tag}, timezone: America/Chicago}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
  tanks: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 120}}}}
  controls: {{priority: critical}}
devices:
  - {{id: pdu, kind: pdu_outlet, class: miners, count: {outlets}, rated_kw: 3.25, min_on_s: 0,
     min_off_s: 0, driver: {{type: modbus, host: {host_a}, port: {port}, profile: rack_pdu_switched,
     channels_per_host: 24, timeout_s: 0.5, settle_s: {settle_s}}}}}
  - {{id: tank, kind: miner, class: tanks, count: 2, rated_kw: 100, units: 20, min_kw: 20,
     control: percent,
     min_on_s: 0, min_off_s: 0, driver: {{type: modbus, host: {host_b}, port: {port},
     profile: load_controller_percent, timeout_s: 0.5, settle_s: {settle_s}}}}}
  - {{id: controls, kind: other, class: controls, rated_kw: 5}}
policy: {{hysteresis_usd_per_mwh: 0, min_dwell_s: 0}}
prices: {{source: none}}
{mqtt}
service: {{cycle_s: 0.2, database: "{db}", metrics_port: null, restore_batch_size: 1000,
          restore_batch_interval_s: 0, verify_timeout_s: 2}}
"""

T0 = datetime(2024, 5, 8, 17, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def leap(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def monotonic(self) -> float:
        """The seconds devices settle in, stepped with the clock (assemble(monotonic=...))."""
        return self.now.timestamp()


def site_config(
    db: Path,
    port: int,
    *,
    outlets: int = 48,
    tag: str = "a",
    host_a: str = "127.0.1.1",
    host_b: str = "127.0.1.101",
    mqtt: str = "",
    settle_s: float = 0.0,  # the simulated devices obey at once unless a test gives them a lag
) -> SiteConfig:
    text = SITE.format(
        tag=tag,
        outlets=outlets,
        host_a=host_a,
        host_b=host_b,
        port=port,
        db=db,
        mqtt=mqtt,
        settle_s=settle_s,
    )
    return parse_config(text, env={})

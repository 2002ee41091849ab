"""The site file: pydantic models of everything a site engineer configures.

Every model forbids unknown keys and is frozen; secret fields are SecretStr and never printed.
How a file is read and its problems reported is agent.config.load.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import time
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, StringConstraints, field_validator, model_validator

from agent.config.drivers import DriverConfig, expand
from agent.config.ercot import ErcotConfig
from agent.config.fleet import FleetConfig
from agent.config.gpu_demand import GpuDemandConfig
from agent.config.links import MqttConfig, PricesConfig, ServiceConfig, SiteMeterConfig, TlsConfig
from agent.config.loads import DeviceConfig, LoadClassConfig
from agent.config.openadr import OpenAdrConfig, OpenAdrLevelConfig, OpenAdrSetpointConfig
from agent.config.openadr3 import OpenAdr3Config
from agent.config.plausible import DEFAULT_MAX_KW, FLEET_OVER_LIMIT_RATIO
from agent.config.sparkplug import SparkplugConfig
from agent.config.strict import Strict
from agent.domain.fleet import DeviceKind, DeviceSpec, Fleet, LoadClass
from agent.domain.hybrid import FlexTier, InferencePool
from agent.domain.settings import FourCpWindow, Policy, Posture, StalePosture
from agent.domain.signals import EmergencyLevel

__all__ = [
    "DeviceConfig",
    "FourCpConfig",
    "LoadClassConfig",
    "MqttConfig",
    "OpenAdrConfig",
    "OpenAdrLevelConfig",
    "OpenAdrSetpointConfig",
    "PolicyConfig",
    "PricesConfig",
    "ServiceConfig",
    "SiteConfig",
    "SiteInfo",
    "TlsConfig",
]


# How old a price may be on a healthy feed, measured from the end of its interval: ERCOT posts a
# real-time 15-minute SPP a few minutes after its interval ends (allow 5), so the latest one can
# be a whole interval plus that lag old; SCED 5-minute LMPs likewise; day-ahead hourly prices are
# known the day before, so only the hour in force ages.
PUBLICATION_RHYTHM_S = {"rt15": 15 * 60 + 5 * 60, "sced5": 5 * 60 + 5 * 60, "dam": 3600}


class SiteInfo(Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    """letters, digits, - and _; MQTT topics default to gridflex/<id>"""
    timezone: str = "America/Chicago"
    """local time for 4CP windows and ERCOT operating days"""
    iso: Literal["ERCOT", "CAISO", "PJM", "MISO", "NYISO", "SPP", "ISONE"] = "ERCOT"
    """the grid operator"""
    settlement_point: str = Field(default="HB_HUBAVG", min_length=1)
    """the price node the site settles at"""
    import_limit_kw: float | None = Field(default=None, gt=0)
    """a safety ceiling the site never exceeds, whatever else asks"""
    plausible_max_kw: dict[DeviceKind, float] = Field(
        default_factory=lambda: {DeviceKind(k): v for k, v in DEFAULT_MAX_KW.items()}
    )
    """the most a device of a kind may be rated (kW): beyond it check-config refuses the rating
    (watts typed for kW); kinds not named keep their defaults (miner 20, gpu 15, pdu_outlet 25)"""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415 - only here

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class FourCpConfig(Strict):
    months: list[Annotated[int, Field(ge=1, le=12)]] = Field(default=[6, 7, 8, 9], min_length=1)
    """the months with a 4CP window"""
    start_local: time = time(15, 0)
    """the window's start, site local time"""
    end_local: time = time(19, 0)
    """the window's end, site local time"""
    trigger: Literal["warning", "window"] = "warning"
    """warning: only on a fresh 4CP warning; window: every day in the window"""
    posture: Posture = Posture.CURTAIL_FLEXIBLE
    """what the site does in the window"""
    warning_stale_after_s: float = Field(default=3600, gt=0)
    """a warning counts this long after its issued_at"""
    forecast_warning_pct: float = Field(default=95, gt=0, le=100)
    """`gridflex backtest --system-load`: the replay warns of a peak for an interval in the
    window whose system load reaches this % of the month's highest load so far (the file taken
    as the forecast a warning service would have issued)"""

    @model_validator(mode="after")
    def _ordered(self) -> FourCpConfig:
        if self.end_local <= self.start_local:
            raise ValueError("end_local must be after start_local")
        return self


class PolicyConfig(Strict):
    hysteresis_usd_per_mwh: float = Field(default=5.0, ge=0, le=1000)
    """stop above breakeven, resume only at or below breakeven minus this"""
    min_dwell_s: float = Field(
        default=300,
        ge=0,
        le=86_400,
        description="the default min_on_s and min_off_s of every device",
    )
    price_stale_after_s: float = Field(default=1800, gt=0, le=86_400)
    """a price whose interval ended longer ago than this is stale"""
    stale_posture: StalePosture = StalePosture.HOLD_LAST
    """what economics does while the price is stale (at start-up, with no price yet, devices
    hold as they are)"""
    emergency_postures: dict[EmergencyLevel, Posture] = Field(default_factory=dict)
    """the posture per grid level (conservation, eea1, eea2, eea3); levels not named keep
    their defaults (conservation, eea1: curtail_interruptible; eea2, eea3: curtail_flexible)"""
    fourcp: FourCpConfig | None = None
    """ERCOT 4CP transmission-charge avoidance; null: no 4CP window"""
    overrides_may_exceed_grid: bool = Field(
        default=False,
        description="an engineer's override beats grid obligations and emergency postures "
        "(never the import limit), with a declared shortfall; off: the grid comes first",
    )
    protected_shed_programs: list[str] = Field(
        default_factory=lambda: ["ERS", "RRS", "ECRS", "emergency"]
    )
    """dispatch programs whose events may cut protected load when the rest is not enough (a
    grid emergency); any other event is met without it, its shortfall declared at acceptance.
    The import limit may always cut protected load"""
    beyond_reach: Literal["accept", "reject"] = "accept"
    """an event the site cannot meet without the load it will not cut: accepted with its
    expected shortfall, or rejected"""


class SiteConfig(Strict):
    site: SiteInfo
    """who the site is"""
    classes: dict[
        Annotated[
            str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
        ],
        LoadClassConfig,
    ] = Field(min_length=1)
    """load classes by name: who gives way first and what their energy is worth"""
    devices: list[DeviceConfig] = Field(min_length=1)
    """the loads, one entry per device or group"""
    policy: PolicyConfig = PolicyConfig()
    """how the engine decides"""
    prices: PricesConfig = PricesConfig()
    """where live prices come from"""
    mqtt: MqttConfig | None = None
    """the broker for dispatch, telemetry, MQTT devices and GPU nodes; null: no MQTT"""
    service: ServiceConfig = ServiceConfig()
    """the running service"""
    openadr: OpenAdrConfig | None = None
    """the site as an OpenADR 2.0b VEN; null: no OpenADR"""
    openadr3: OpenAdr3Config | None = None
    """the site as an OpenADR 3.0 VEN; null: no OpenADR 3"""
    sparkplug: SparkplugConfig | None = None
    """the site as a Sparkplug B edge node for SCADA (Ignition); null: JSON over MQTT only"""
    gpu_demand: GpuDemandConfig | None = None
    """inference pools whose demand is read from their servers' metrics; null: none"""
    site_meter: SiteMeterConfig | None = None
    """the site's revenue meter; null: the sum of device readings is the site's load"""
    fleet_bus: FleetConfig | None = Field(default=None, alias="fleet")
    """the site as a leaf of a fleet on NATS JetStream (docs/fleet.md); null: one site alone"""
    ercot: ErcotConfig | None = None
    """the site as an ERCOT Load Resource following SCED base points (docs/ercot.md); null:
    base points are refused"""

    # -- what the core needs -----------------------------------------------------------------
    def load_classes(self) -> list[LoadClass]:
        return [
            LoadClass(
                name,
                c.priority,
                c.breakeven_usd_per_mwh(),
                follows=c.follows,
                gives_way_first=c.gives_way_first,
                follow_curve=c.curve(),
            )
            for name, c in self.classes.items()
        ]

    def device_specs(self) -> list[DeviceSpec]:
        default_dwell = self.policy.min_dwell_s
        return [
            DeviceSpec(
                device_id=d.id if d.count == 1 else f"{d.id}-{k + 1:04d}",
                load_class=d.load_class,
                kind=d.kind,
                rated_kw=d.rated_kw,
                min_kw=d.min_kw,
                control_mode=d.control,
                min_on_s=default_dwell if d.min_on_s is None else d.min_on_s,
                min_off_s=default_dwell if d.min_off_s is None else d.min_off_s,
                max_ramp_kw_per_s=d.max_ramp_kw_per_s,
                idle_kw=d.idle_kw,
            )
            for d in self.devices
            for k in range(d.count)
        ]

    def device_drivers(self) -> dict[str, DriverConfig]:
        """Driver address of every (expanded) device that has one."""
        return dict(self.iter_device_drivers())

    def iter_device_drivers(self) -> Iterator[tuple[str, DriverConfig]]:
        """The same, one device at a time: a 50,000-outlet site never holds 50,000 addresses
        at once (each a model of its own) while its drivers are built."""
        for d in self.devices:
            if d.driver is None:
                continue
            for k in range(d.count):
                device_id = d.id if d.count == 1 else f"{d.id}-{k + 1:04d}"
                yield device_id, expand(d.driver, k)

    def fleet(self) -> Fleet:
        return Fleet.build(self.load_classes(), self.device_specs())

    def decision_policy(self) -> Policy:
        p = self.policy
        defaults = Policy().emergency_postures
        fourcp = None
        if p.fourcp is not None:
            fourcp = FourCpWindow(
                months=frozenset(p.fourcp.months),
                start_local=p.fourcp.start_local,
                end_local=p.fourcp.end_local,
                posture=p.fourcp.posture,
                trigger=p.fourcp.trigger,
                warning_stale_after_s=p.fourcp.warning_stale_after_s,
                forecast_warning_pct=p.fourcp.forecast_warning_pct,
            )
        return Policy(
            timezone=self.site.timezone,
            import_limit_kw=self.site.import_limit_kw,
            hysteresis_usd_per_mwh=p.hysteresis_usd_per_mwh,
            price_stale_after_s=p.price_stale_after_s,
            stale_posture=p.stale_posture,
            emergency_postures={**defaults, **p.emergency_postures},
            fourcp=fourcp,
            overrides_may_exceed_grid=p.overrides_may_exceed_grid,
            protected_shed_programs=frozenset(p.protected_shed_programs),
            pools=self.inference_pools(),
            resource=None if self.ercot is None else self.ercot.model(),
        )

    def inference_pools(self) -> tuple[InferencePool, ...]:
        """The pools the engine sizes from their demand (those with an `engine` section)."""
        if self.gpu_demand is None:
            return ()
        pools = []
        for name, pool in self.gpu_demand.pools.items():
            e = pool.engine
            if e is None:
                continue
            tiers = tuple(FlexTier(t.give_up_pct / 100, t.for_s) for t in e.flex_tiers)
            ttft = e.ttft_target_s is not None
            level_s = e.ttft_target_s if ttft else e.queue_time_target_s
            assert level_s is not None  # the engine section holds exactly one
            pools.append(InferencePool(
                name, e.load_class, e.requests_per_server, level_s,
                service_level="ttft" if ttft else "queue_time",
                headroom_fraction=e.headroom_pct / 100, min_serving=e.min_serving,
                flex_tiers=tiers, lend_value_usd_per_mwh=e.lend_value_usd_per_mwh,
                demand_stale_after_s=pool.stale_after_s, shrink_fraction=e.shrink_pct / 100,
                spare_sqrt=e.spare_sqrt, warmup_s=e.warmup_s,
                power_speed_exponent=e.power_speed_exponent,
            ))  # fmt: skip
        return tuple(pools)

    # secrets written in the file itself rather than `${ENV}` (set by agent.config.load)
    _literal_secrets: list[str] = PrivateAttr(default_factory=list)
    _world_readable: bool = PrivateAttr(default=False)  # the file, when it holds a secret

    def warnings(self) -> list[str]:
        """What is valid but probably not meant (check-config prints them, run logs them)."""
        found = [
            f"{path} is written in the site file: put it in the service's EnvironmentFile and "
            f"write ${{GRIDFLEX_...}} here (docs/install.md)"
            for path in self._literal_secrets
        ]
        if self._world_readable:
            found.append("the site file is readable by every user of this host and holds a "
                         "secret: chmod 0640 it (root and the service's group), and move the "
                         "secret to the EnvironmentFile")  # fmt: skip
        rhythm_s = PUBLICATION_RHYTHM_S[self.prices.market]
        stale_s = self.policy.price_stale_after_s
        if self.prices.source != "none" and stale_s < rhythm_s:
            found.append(
                f"policy.price_stale_after_s {stale_s:g} s is shorter than the {self.prices.market}"
                f" feed's rhythm (a price can be {rhythm_s} s past its interval before the next"
                " one is published): a healthy feed will read as stale"
            )
        limit_kw = self.site.import_limit_kw
        fleet_kw = sum(d.rated_kw for d in self.devices)
        if limit_kw is not None and fleet_kw > FLEET_OVER_LIMIT_RATIO * limit_kw:
            found.append(
                f"the devices are rated {fleet_kw:,.0f} kW, {fleet_kw / limit_kw:.1f} times "
                f"site.import_limit_kw {limit_kw:,.0f}: a rating in W where kW is meant, or an "
                "import limit too low? (valid for a site that never runs everything at once)"
            )
        rated_kw = sum(d.rated_kw * d.count for d in self.devices)
        if self.ercot is not None and self.ercot.tolerance_min_kw > 0.1 * rated_kw:
            found.append(
                f"ercot.tolerance_min_kw {self.ercot.tolerance_min_kw:,.0f} kW is more than a "
                f"tenth of the site's {rated_kw:,.0f} kW rated: almost any load meets a base "
                "point; set the tolerance the site's QSE is held to"
            )
        if self.openadr is not None and not self.openadr.programs:
            found.append(
                "openadr.programs is empty: events of every market context the VTN sends are "
                "taken; list the programs the site is enrolled in"
            )
        return found

    @property
    def topic_prefix(self) -> str:
        prefix = self.mqtt.topic_prefix if self.mqtt is not None else None
        return prefix or f"gridflex/{self.site.id}"

"""The site file: pydantic models of everything a site engineer configures.

Every model forbids unknown keys and is frozen; secret fields are SecretStr and never printed.
How a file is read and its problems reported is agent.config.load.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from agent.config.drivers import DriverConfig, Host, ModbusDriverConfig, expand
from agent.config.fleet import FleetConfig
from agent.config.gpu_demand import GpuDemandConfig
from agent.config.keys import MIN_KEY_BYTES, checked_keys
from agent.config.openadr import OpenAdrConfig, OpenAdrLevelConfig, OpenAdrSetpointConfig
from agent.config.openadr3 import OpenAdr3Config
from agent.config.plausible import DEFAULT_MAX_KW, FLEET_OVER_LIMIT_RATIO
from agent.config.sparkplug import SparkplugConfig
from agent.domain.fleet import ControlMode, DeviceKind, DeviceSpec, Fleet, LoadClass, Priority
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


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )


# How old a price may be on a healthy feed, measured from the end of its interval: ERCOT posts a
# real-time 15-minute SPP a few minutes after its interval ends (allow 5), so the latest one can
# be a whole interval plus that lag old; SCED 5-minute LMPs likewise; day-ahead hourly prices are
# known the day before, so only the hour in force ages.
PUBLICATION_RHYTHM_S = {"rt15": 15 * 60 + 5 * 60, "sced5": 5 * 60 + 5 * 60, "dam": 3600}


# -- economics: every load class ends with a value of energy, its breakeven price ------------
class FixedValue(_Strict):
    kind: Literal["fixed"]
    """`fixed`: the class's energy is worth a set price"""
    value_usd_per_mwh: float = Field(ge=-1000, le=100_000)
    """what a MWh drawn by this class is worth; above this price it stops"""

    def breakeven_usd_per_mwh(self) -> float:
        return self.value_usd_per_mwh


class MiningValue(_Strict):
    """A miner earns hashprice per PH/s per day and burns efficiency J/TH (= W per TH/s)."""

    kind: Literal["mining"]
    """`mining`: the breakeven comes from hashprice and efficiency"""
    hashprice_usd_per_ph_day: float = Field(gt=0, le=10_000)
    """what 1 PH/s earns in a day (the pool's hashprice)"""
    efficiency_j_per_th: float = Field(gt=0, le=500)
    """the miners' efficiency, J/TH (= W per TH/s)"""
    pool_fee_pct: float = Field(default=0.0, ge=0, lt=100)
    """the pool's fee, taken off the hashprice"""

    def breakeven_usd_per_mwh(self) -> float:
        # 1 PH/s at E J/TH draws E kW, i.e. 0.024 * E MWh per day.
        mwh_per_ph_day = 0.024 * self.efficiency_j_per_th
        return self.hashprice_usd_per_ph_day * (1 - self.pool_fee_pct / 100) / mwh_per_ph_day


class InferenceValue(_Strict):
    """AI inference earns revenue per GPU-hour and draws watts per GPU."""

    kind: Literal["inference"]
    """`inference`: the breakeven comes from GPU-hour revenue"""
    revenue_usd_per_gpu_hour: float = Field(gt=0, le=1000)
    """what one GPU earns per hour serving"""
    watts_per_gpu: float = Field(gt=0, le=10_000)
    """what one GPU draws with its share of the server"""

    def breakeven_usd_per_mwh(self) -> float:
        return self.revenue_usd_per_gpu_hour / (self.watts_per_gpu / 1e6)


Economics = Annotated[FixedValue | MiningValue | InferenceValue, Field(discriminator="kind")]


class LoadClassConfig(_Strict):
    priority: Priority
    """who gives way first: interruptible < flexible < protected < critical"""
    economics: Economics | None = None
    """what the class's energy is worth (its breakeven price); needed by interruptible and flexible
    classes unless they follow another"""
    follows: str | None = Field(default=None, description="cooling: follow this class's load")
    follow_curve: list[tuple[float, float]] | None = None
    """a follower's draw (% of its rating) at its leader's load (% of the leader's rating), as
    points [leader %, follower %] from 0 to 100 in rising order, interpolated; null: the same %"""
    gives_way_first: bool = False
    """under a ceiling this class gives way before any other, whatever its value (a contract
    says so); otherwise interruptible and flexible classes give way least valuable MWh first"""

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_by_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return Priority[value.upper()]
            except KeyError:
                names = ", ".join(p.label for p in Priority)
                raise ValueError(f"must be one of {names}") from None
        return value

    @model_validator(mode="after")
    def _needs_value(self) -> LoadClassConfig:
        sheddable = self.priority in {Priority.INTERRUPTIBLE, Priority.FLEXIBLE}
        if sheddable and self.economics is None and self.follows is None:
            raise ValueError("an interruptible or flexible class needs `economics` (or `follows`)")
        if self.follow_curve is not None:
            if self.follows is None:
                raise ValueError("follow_curve is for a class that `follows` another")
            xs = [x for x, _ in self.follow_curve]
            rising = all(a < b for a, b in itertools.pairwise(xs))
            if len(xs) < 2 or xs[0] != 0 or xs[-1] != 100 or not rising:
                raise ValueError("follow_curve: leader % must rise from 0 to 100")
            if any(not 0 <= y <= 100 for _, y in self.follow_curve):
                raise ValueError("follow_curve: follower % must be within 0..100")
        if self.gives_way_first and not sheddable:
            raise ValueError("gives_way_first is for an interruptible or flexible class")
        return self

    def curve(self) -> tuple[tuple[float, float], ...] | None:
        if self.follow_curve is None:
            return None
        return tuple((x / 100.0, y / 100.0) for x, y in self.follow_curve)

    def breakeven_usd_per_mwh(self) -> float:
        return math.inf if self.economics is None else self.economics.breakeven_usd_per_mwh()


class DeviceConfig(_Strict):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    """the device's id (a group's members are <id>-0001 ..)"""
    kind: DeviceKind
    """what the device is (for reports and the drivers that fit it)"""
    load_class: str = Field(alias="class", min_length=1)
    """the load class the device belongs to (a key of `classes`)"""
    count: int = Field(default=1, ge=1, le=100_000, description="a group of identical devices")
    rated_kw: float = Field(gt=0, le=100_000)
    """what the device draws running flat out"""
    min_kw: float = Field(default=0.0, ge=0)
    """the least a running throttled device draws"""
    control: ControlMode = ControlMode.ON_OFF
    """how it is commanded: all or nothing, a kW limit, or a percentage of rated"""
    min_on_s: float | None = Field(default=None, ge=0, le=86_400)
    """once started, run at least this long (default policy.min_dwell_s)"""
    min_off_s: float | None = Field(default=None, ge=0, le=86_400)
    """once stopped, stay off at least this long (default policy.min_dwell_s)"""
    max_ramp_kw_per_s: float | None = Field(default=None, gt=0)
    """the fastest a throttled device may change its setpoint"""
    idle_kw: float = Field(default=0.0, ge=0, description="drawn when commanded off")
    units: int = Field(default=1, ge=1, le=10_000)
    """how many machines of its kind the device stands for (an immersion tank or a container
    behind one controller): its kind's plausible maximum (site.plausible_max_kw) scales with it"""
    driver: DriverConfig | None = None
    """how the device is reached (`type`: modbus, miner, mqtt, gpu_node, simulated); null: modelled
    only"""


class SiteInfo(_Strict):
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


class FourCpConfig(_Strict):
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


class PolicyConfig(_Strict):
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


class PricesConfig(_Strict):
    """Where live prices come from."""

    source: Literal["ercot-api", "ercot-mis", "replay", "none"] = "ercot-mis"
    """ERCOT's Public API, its MIS reports, a replayed price file, or no prices"""
    market: Literal["rt15", "sced5", "dam"] = "rt15"
    """real-time 15-minute SPP, 5-minute SCED LMP, or day-ahead hourly"""
    replay_path: Path | None = None
    """the price file `source: replay` plays (see docs/prices.md)"""
    replay_speedup: float = Field(default=1.0, gt=0, le=1e6)
    """replay this many times faster than real time"""
    poll_interval_s: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="while the next expected price is not yet published, ask again this often",
    )
    base_url: str | None = None
    """the API's address (default: ERCOT's own)"""
    auth_url: str | None = None
    """the token endpoint of the ERCOT Public API (default: ERCOT's own)"""


class TlsConfig(_Strict):
    ca_file: Path
    """the CA that signed the broker's certificate"""
    cert_file: Path | None = None
    """the client certificate, for brokers that ask for one"""
    key_file: Path | None = None
    """the client certificate's key"""


class MqttConfig(_Strict):
    host: Host = "127.0.0.1"
    """the broker's address"""
    port: int = Field(default=1883, ge=1, le=65535)
    """the broker's port (8883 is usual with TLS)"""
    client_id: str | None = None
    """default gridflex-<site id>; the persistent session is kept under it"""
    username: str | None = None
    """the broker's user name"""
    password: SecretStr | None = None
    """the broker's password: write ${GRIDFLEX_MQTT_PASSWORD}"""
    tls: TlsConfig | None = None
    """TLS to the broker; null: plain TCP (loopback or a closed network only)"""
    topic_prefix: str | None = Field(default=None, description="default gridflex/<site id>")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    """MQTT keep-alive; the broker publishes the last will after 1.5x this"""
    hmac_secret: SecretStr | None = Field(
        default=None, description="the site key: signed messages without key_id (32+ bytes)"
    )
    hmac_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="one key per sender (QSE, SCADA, engineers), named by key_id (32+ bytes)",
    )
    replay_window_s: float = Field(default=300, gt=0, le=86_400)
    """a signed message's issued_at may be this old; its nonce is remembered this long"""
    clock_skew_s: float = Field(default=5, ge=0, le=120)
    """how far ahead a sender's clock may be"""
    max_message_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """larger inbound messages are rejected before parsing"""
    max_messages_per_s: float = Field(default=20, gt=0, description="per inbound topic")
    max_burst: int = Field(default=200, ge=1, description="messages beyond the rate at once")

    @field_validator("hmac_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_KEY_BYTES} bytes (an empty or short key "
                             "lets anyone sign)")  # fmt: skip
        return value

    @field_validator("hmac_keys")
    @classmethod
    def _keys_long_enough(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return checked_keys(value)


class ServiceConfig(_Strict):
    mode: Literal["control", "shadow"] = "control"
    """control: gridflex commands the devices; shadow: it reads every device and signal and
    decides, but writes to no device: acks say shadow, and `gridflex shadow-report` compares
    what it would have done with what the site did. A change is a restart, logged"""
    cycle_s: float = Field(default=2.0, gt=0, le=60)
    """one decision per this many seconds"""
    database: Path = Path("/var/lib/gridflex/gridflex.sqlite3")
    """the SQLite file of events, audit and outbox"""
    metrics_port: int | None = Field(default=9464, ge=1, le=65535)
    """Prometheus /metrics; null: not served"""
    metrics_host: str = Field(
        default="127.0.0.1",
        description="where /metrics listens: loopback unless Prometheus scrapes from elsewhere "
        "(then the site's address, behind its firewall)",
    )
    audit_retention_days: float | None = Field(
        default=400, gt=0, description="audit rows older than this are deleted (daily); "
        "null keeps them for ever. Settlement disputes reach back about a year.",
    )  # fmt: skip
    status_page_port: int | None = Field(default=None, ge=1, le=65535)
    """a read-only status page (load, events, devices needing attention, the latest decision's
    reasons) on this port; null: not served"""
    status_page_host: str = "127.0.0.1"
    """where the status page listens: loopback; reach it over SSH (ssh -L) rather than opening it
    to the site's network, since it has no login"""
    shutdown_posture: Literal["hold", "restore"] = "hold"
    """on stop: hold devices as they are, or restore them to running"""
    verify_timeout_s: float = Field(default=10, gt=0, le=600)
    """a device that has not reached its setpoint this long after its settle time is not
    obeying"""
    restore_batch_size: int = Field(default=50, ge=1)
    """after a restart or an event's end, start this many devices at once"""
    restore_batch_interval_s: float = Field(default=5, ge=0, le=600)
    """and wait this long between batches"""
    ramp_window_s: float = Field(default=10, ge=0, le=600)
    """after a dispatch asks for less, the site has this long to get there: cycles over the
    ceiling within it are counted as ramp, not as violations, and `active` may be sent"""


class SiteMeterConfig(_Strict):
    """The point-of-interconnection (revenue) meter: what the site draws from the grid, read on
    the device cadence. With it, compliance and every ack are judged on it, not on the sum of
    device readings, and that sum is checked against it every cycle."""

    driver: ModbusDriverConfig
    """a read-only power analyser profile (three_phase_meter, siemens_pac3200)"""
    tolerance_kw: float = Field(default=5.0, ge=0, le=100_000)
    """how far the sum of device readings may be from the meter before it is an alarm ..."""
    tolerance_pct: float = Field(default=3.0, ge=0, le=100)
    """... or this share of the meter's reading, whichever is larger"""
    stale_after_s: float = Field(default=10.0, gt=0, le=3600)
    """a reading older than this is not the judge: the device readings are, and acks say so"""


class SiteConfig(_Strict):
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

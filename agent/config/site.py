"""The site file: pydantic models of everything a site engineer configures.

Every model forbids unknown keys and is frozen; secret fields are SecretStr and never printed.
How a file is read and its problems reported is agent.config.load.
"""

from __future__ import annotations

import math
import re
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

from agent.config.drivers import DriverConfig, Host, expand
from agent.config.openadr import OpenAdrConfig, OpenAdrLevelConfig, OpenAdrSetpointConfig
from agent.domain.fleet import ControlMode, DeviceKind, DeviceSpec, Fleet, LoadClass, Priority
from agent.domain.settings import FourCpWindow, Policy, Posture, StalePosture
from agent.domain.signals import EmergencyLevel

MIN_KEY_BYTES = 32  # HMAC-SHA256 keys: shorter ones can be guessed, an empty one is no key

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
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# How old a price may be on a healthy feed, measured from the end of its interval: ERCOT posts a
# real-time 15-minute SPP a few minutes after its interval ends (allow 5), so the latest one can
# be a whole interval plus that lag old; SCED 5-minute LMPs likewise; day-ahead hourly prices are
# known the day before, so only the hour in force ages.
PUBLICATION_RHYTHM_S = {"rt15": 15 * 60 + 5 * 60, "sced5": 5 * 60 + 5 * 60, "dam": 3600}


# -- economics: every load class ends with a value of energy, its breakeven price ------------
class FixedValue(_Strict):
    kind: Literal["fixed"]
    value_usd_per_mwh: float = Field(ge=-1000, le=100_000)

    def breakeven_usd_per_mwh(self) -> float:
        return self.value_usd_per_mwh


class MiningValue(_Strict):
    """A miner earns hashprice per PH/s per day and burns efficiency J/TH (= W per TH/s)."""

    kind: Literal["mining"]
    hashprice_usd_per_ph_day: float = Field(gt=0, le=10_000)
    efficiency_j_per_th: float = Field(gt=0, le=500)
    pool_fee_pct: float = Field(default=0.0, ge=0, lt=100)

    def breakeven_usd_per_mwh(self) -> float:
        # 1 PH/s at E J/TH draws E kW, i.e. 0.024 * E MWh per day.
        mwh_per_ph_day = 0.024 * self.efficiency_j_per_th
        return self.hashprice_usd_per_ph_day * (1 - self.pool_fee_pct / 100) / mwh_per_ph_day


class InferenceValue(_Strict):
    """AI inference earns revenue per GPU-hour and draws watts per GPU."""

    kind: Literal["inference"]
    revenue_usd_per_gpu_hour: float = Field(gt=0, le=1000)
    watts_per_gpu: float = Field(gt=0, le=10_000)

    def breakeven_usd_per_mwh(self) -> float:
        return self.revenue_usd_per_gpu_hour / (self.watts_per_gpu / 1e6)


Economics = Annotated[FixedValue | MiningValue | InferenceValue, Field(discriminator="kind")]


class LoadClassConfig(_Strict):
    priority: Priority
    economics: Economics | None = None
    follows: str | None = Field(default=None, description="cooling: follow this class's load")

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
        return self

    def breakeven_usd_per_mwh(self) -> float:
        return math.inf if self.economics is None else self.economics.breakeven_usd_per_mwh()


class DeviceConfig(_Strict):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: DeviceKind
    load_class: str = Field(alias="class", min_length=1)
    count: int = Field(default=1, ge=1, le=100_000, description="a group of identical devices")
    rated_kw: float = Field(gt=0, le=100_000)
    min_kw: float = Field(default=0.0, ge=0)
    control: ControlMode = ControlMode.ON_OFF
    min_on_s: float | None = Field(default=None, ge=0, le=86_400)
    min_off_s: float | None = Field(default=None, ge=0, le=86_400)
    max_ramp_kw_per_s: float | None = Field(default=None, gt=0)
    idle_kw: float = Field(default=0.0, ge=0, description="drawn when commanded off")
    driver: DriverConfig | None = None


class SiteInfo(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    timezone: str = "America/Chicago"
    iso: Literal["ERCOT", "CAISO", "PJM", "MISO", "NYISO", "SPP", "ISONE"] = "ERCOT"
    settlement_point: str = Field(default="HB_HUBAVG", min_length=1)
    import_limit_kw: float | None = Field(default=None, gt=0)

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
    start_local: time = time(15, 0)
    end_local: time = time(19, 0)
    trigger: Literal["warning", "window"] = "warning"
    posture: Posture = Posture.CURTAIL_FLEXIBLE
    warning_stale_after_s: float = Field(default=3600, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> FourCpConfig:
        if self.end_local <= self.start_local:
            raise ValueError("end_local must be after start_local")
        return self


class PolicyConfig(_Strict):
    hysteresis_usd_per_mwh: float = Field(default=5.0, ge=0, le=1000)
    min_dwell_s: float = Field(default=300, ge=0, le=86_400, description="default min on/off")
    price_stale_after_s: float = Field(default=1800, gt=0, le=86_400)
    stale_posture: StalePosture = StalePosture.HOLD_LAST
    emergency_postures: dict[EmergencyLevel, Posture] = Field(default_factory=dict)
    fourcp: FourCpConfig | None = None
    overrides_may_exceed_grid: bool = Field(
        default=False,
        description="an engineer's override beats grid obligations and emergency postures "
        "(never the import limit), with a declared shortfall; off: the grid comes first",
    )


class PricesConfig(_Strict):
    """Where live prices come from."""

    source: Literal["ercot-api", "ercot-mis", "replay", "none"] = "ercot-mis"
    market: Literal["rt15", "sced5", "dam"] = "rt15"
    replay_path: Path | None = None
    replay_speedup: float = Field(default=1.0, gt=0, le=1e6)
    poll_interval_s: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="while the next expected price is not yet published, ask again this often",
    )
    base_url: str | None = None
    auth_url: str | None = None


class TlsConfig(_Strict):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttConfig(_Strict):
    host: Host = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    topic_prefix: str | None = Field(default=None, description="default gridflex/<site id>")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    hmac_secret: SecretStr | None = Field(
        default=None, description="the site key: signed messages without key_id (32+ bytes)"
    )
    hmac_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="one key per sender (QSE, SCADA, engineers), named by key_id (32+ bytes)",
    )
    replay_window_s: float = Field(default=300, gt=0, le=86_400)
    clock_skew_s: float = Field(default=5, ge=0, le=120)
    max_message_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
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
        for key_id, key in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_.:@/-]{1,64}", key_id):
                raise ValueError(f"key id {key_id!r}: letters, digits and _.:@/- only")
            if len(key.get_secret_value().encode()) < MIN_KEY_BYTES:
                raise ValueError(f"key {key_id}: must be at least {MIN_KEY_BYTES} bytes")
        return value


class ServiceConfig(_Strict):
    cycle_s: float = Field(default=2.0, gt=0, le=60)
    database: Path = Path("/var/lib/gridflex/gridflex.sqlite3")
    metrics_port: int | None = Field(default=9464, ge=1, le=65535)
    metrics_host: str = Field(
        default="127.0.0.1",
        description="where /metrics listens: loopback unless Prometheus scrapes from elsewhere "
        "(then the site's address, behind its firewall)",
    )
    audit_retention_days: float | None = Field(
        default=400, gt=0, description="audit rows older than this are deleted (daily); "
        "null keeps them for ever. Settlement disputes reach back about a year.",
    )  # fmt: skip
    shutdown_posture: Literal["hold", "restore"] = "hold"
    verify_timeout_s: float = Field(default=10, gt=0, le=600)
    restore_batch_size: int = Field(default=50, ge=1)
    restore_batch_interval_s: float = Field(default=5, ge=0, le=600)


class SiteConfig(_Strict):
    site: SiteInfo
    classes: dict[
        Annotated[
            str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
        ],
        LoadClassConfig,
    ] = Field(min_length=1)
    devices: list[DeviceConfig] = Field(min_length=1)
    policy: PolicyConfig = PolicyConfig()
    prices: PricesConfig = PricesConfig()
    mqtt: MqttConfig | None = None
    service: ServiceConfig = ServiceConfig()
    openadr: OpenAdrConfig | None = None

    # -- what the core needs -----------------------------------------------------------------
    def load_classes(self) -> list[LoadClass]:
        return [
            LoadClass(name, c.priority, c.breakeven_usd_per_mwh(), follows=c.follows)
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
        drivers: dict[str, DriverConfig] = {}
        for d in self.devices:
            if d.driver is None:
                continue
            for k in range(d.count):
                device_id = d.id if d.count == 1 else f"{d.id}-{k + 1:04d}"
                drivers[device_id] = expand(d.driver, k)
        return drivers

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
        )

    # secrets written in the file itself rather than `${ENV}` (set by agent.config.load)
    _literal_secrets: list[str] = PrivateAttr(default_factory=list)

    def warnings(self) -> list[str]:
        """What is valid but probably not meant (check-config prints them, run logs them)."""
        found = [
            f"{path} is written in the site file: put it in the service's EnvironmentFile and "
            f"write ${{GRIDFLEX_...}} here (docs/install.md)"
            for path in self._literal_secrets
        ]
        rhythm_s = PUBLICATION_RHYTHM_S[self.prices.market]
        stale_s = self.policy.price_stale_after_s
        if self.prices.source != "none" and stale_s < rhythm_s:
            found.append(
                f"policy.price_stale_after_s {stale_s:g} s is shorter than the {self.prices.market}"
                f" feed's rhythm (a price can be {rhythm_s} s past its interval before the next"
                " one is published): a healthy feed will read as stale"
            )
        return found

    @property
    def topic_prefix(self) -> str:
        prefix = self.mqtt.topic_prefix if self.mqtt is not None else None
        return prefix or f"gridflex/{self.site.id}"

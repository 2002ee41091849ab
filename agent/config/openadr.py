"""The `openadr` section of the site file: the agent as an OpenADR 2.0b VEN."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator

from agent.config.strict import Strict
from agent.domain.settings import Posture

__all__ = ["MIN_POLL_S", "OpenAdrConfig", "OpenAdrLevelConfig", "OpenAdrSetpointConfig"]


# the shortest poll this VEN keeps to, whatever the VTN asks: an HTTPS round trip, signed XML
# and parsing take tens of milliseconds on a site controller
MIN_POLL_S = 0.2


class OpenAdrLevelConfig(Strict):
    """What one SIMPLE level (0 normal, 1 moderate, 2 high, 3 special) asks of the site:
    exactly one of a posture, a site ceiling or an amount to shed."""

    posture: Posture | None = None
    """a posture for the level (none, curtail_flexible, curtail_protected)"""
    ceiling_kw: float | None = Field(default=None, ge=0)
    """a site ceiling for the level"""
    shed_kw: float | None = Field(default=None, gt=0)
    """kW to shed below the site's load at the event's start"""

    @model_validator(mode="after")
    def _exactly_one(self) -> OpenAdrLevelConfig:
        given = [v for v in (self.posture, self.ceiling_kw, self.shed_kw) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of posture, ceiling_kw, shed_kw")
        # A VEN sees the site through SiteView, whose floors are "all sheddable load off"
        # (curtail_flexible) and "protected load off too" (curtail_protected); interruptible
        # alone has no site-wide floor, so it would have to be guessed. Say so at load time.
        if self.posture is Posture.CURTAIL_INTERRUPTIBLE:
            raise ValueError(
                "posture curtail_interruptible has no site-wide ceiling: use none, "
                "curtail_flexible, curtail_protected, or give ceiling_kw / shed_kw"
            )
        return self


class OpenAdrSetpointConfig(Strict):
    """How a LOAD_DISPATCH / LOAD_CONTROL value is read: the site's ceiling, or kW to shed."""

    meaning: Literal["ceiling", "shed"]
    """ceiling: the value is the site's ceiling; shed: kW to shed"""
    unit: Literal["W", "kW", "MW"] = Field(
        default="kW", description="when the signal carries no itemBase of its own"
    )


class OpenAdrConfig(Strict):
    vtn_url: str = Field(min_length=1, pattern=r"^https?://")
    """the VTN's address (https:// unless allow_plain_http)"""
    ven_name: str = Field(min_length=1, max_length=128)
    """the VEN name registered with the VTN"""
    ven_id: str | None = Field(default=None, description="default: the id the VTN assigns")
    cert_file: Path | None = None
    """the VEN's client certificate (mutual TLS)"""
    key_file: Path | None = None
    """the certificate's key"""
    key_passphrase: SecretStr | None = None
    """the key's passphrase, from the environment"""
    ca_file: Path | None = None
    """the CA that signed the VTN's certificate"""
    vtn_fingerprint: str | None = Field(
        default=None, pattern=r"^([0-9A-Fa-f]{2}:){9}[0-9A-Fa-f]{2}$"
    )
    """the VTN certificate's fingerprint (10 hex pairs), checked on every message"""
    allow_plain_http: bool = False
    """accept an http:// VTN (test rigs only)"""
    poll_interval_s: float | None = Field(
        default=None,
        ge=MIN_POLL_S,
        le=86_400,
        description="default: the oadrPollFreq the VTN asks for (whole seconds: OpenADR 2.0b "
        f"durations have no fractions); here it may be sub-second, down to {MIN_POLL_S} s",
    )
    programs: list[str] = Field(default_factory=list)
    """the market contexts (program URIs) the site is enrolled in: an event of any other is
    opted out and never applied; empty: every program the VTN sends (check-config warns)"""
    resource_ids: list[str] = Field(default_factory=list)
    """the resource ids that name this site in eiTarget (report_resource_id always does)"""
    group_ids: list[str] = Field(default_factory=list)
    """the group ids this VEN belongs to: an event targeting another group is not for it"""
    party_ids: list[str] = Field(default_factory=list)
    """the party ids this VEN stands for"""
    price_signals: bool = False
    """ELECTRICITY_PRICE / ENERGY_PRICE events become the engine's price (then `prices.source`
    must be none: one price source)"""
    simple_levels: dict[Annotated[int, Field(ge=0, le=3)], OpenAdrLevelConfig] = Field(
        default_factory=lambda: {0: OpenAdrLevelConfig(posture=Posture.NONE)}
    )
    """what each SIMPLE level 0-3 asks of the site"""
    load_dispatch: OpenAdrSetpointConfig | None = None
    """how a LOAD_DISPATCH setpoint is read; null: not accepted"""
    load_control: OpenAdrSetpointConfig | None = None
    """how a LOAD_CONTROL setpoint is read; null: not accepted"""
    opt_out_when_infeasible: bool = True
    """opt out of an event the site cannot meet, rather than opt in and fail"""
    report_resource_id: str = Field(default="site", min_length=1)
    """the resource id the VEN reports telemetry under"""
    nominal_hz: Literal[50, 60] = 60
    """the grid frequency the report metadata declares (ERCOT and North America: 60)"""
    nominal_voltage_v: float = Field(default=480, gt=0, le=800_000)
    """the site's service voltage, as the report metadata declares it"""

    @model_validator(mode="after")
    def _transport(self) -> OpenAdrConfig:
        if self.vtn_url.startswith("http://"):
            if not self.allow_plain_http:
                raise ValueError(
                    "plain HTTP sends dispatch unauthenticated: use https://, or set "
                    "allow_plain_http: true (test rigs only)"
                )
            return self
        missing = [n for n in ("cert_file", "key_file", "ca_file") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"an https VTN needs {', '.join(missing)} (OpenADR 2.0b mutual TLS)")
        return self

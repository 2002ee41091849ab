"""The MQTT interface's messages as pydantic models: the contract docs/mqtt.md is generated from.

Times are ISO-8601 with an offset (a naive time is rejected: "10:00" in whose zone?). Unknown
fields are rejected so a misspelt `target_kW` cannot be silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DecisionMessage",
    "DispatchAck",
    "DispatchMessage",
    "OverrideAck",
    "OverrideMessage",
    "SetpointOut",
    "TelemetryMessage",
]

_ID = r"^[A-Za-z0-9_.:@/-]+$"
_MAX_KW = 10_000_000.0  # 10 GW: any larger figure is a typo, not a site


class _In(BaseModel):
    # strict kW fields: `true` is not 1 kW
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DispatchMessage(_In):
    """`<prefix>/dispatch`: the grid operator, QSE or site SCADA asks the site to limit or shed."""

    event_id: str = Field(min_length=1, max_length=128, pattern=_ID)
    kind: Literal["limit", "shed", "release"] = Field(
        description="limit: keep the site at or below target_kw; shed: draw shed_kw less than "
        "the site's load when the event starts; release: end the event early"
    )
    target_kw: float | None = Field(
        default=None, strict=True, ge=0, le=_MAX_KW, description="for limit"
    )
    shed_kw: float | None = Field(
        default=None, strict=True, gt=0, le=_MAX_KW, description="for shed"
    )
    start: AwareDatetime | None = Field(default=None, description="default: now")
    end: AwareDatetime | None = Field(default=None, description="default: until released")
    program: str = Field(
        default="manual", min_length=1, max_length=32, pattern=_ID,
        description="ERS, RRS, ECRS, 4CP, price, manual, ...",
    )  # fmt: skip
    issued_at: AwareDatetime
    signature: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="HMAC-SHA256 (hex) of the message without this field, keys sorted, compact",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DispatchMessage:
        if self.kind == "limit" and (self.target_kw is None or self.shed_kw is not None):
            raise ValueError("a limit needs target_kw (and no shed_kw)")
        if self.kind == "shed" and (self.shed_kw is None or self.target_kw is not None):
            raise ValueError("a shed needs shed_kw (and no target_kw)")
        if self.kind == "release" and (self.target_kw is not None or self.shed_kw is not None):
            raise ValueError("a release carries no target_kw or shed_kw")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class OverrideMessage(_In):
    """`<prefix>/override`: the site engineer forces a device or a class, until `expires_at`."""

    override_id: str = Field(min_length=1, max_length=128, pattern=_ID)
    action: Literal["on", "off", "limit", "clear"] = Field(
        description="on: run at rated; off; limit: cap at limit_kw or limit_pct; "
        "clear: remove the override with this id"
    )
    device_id: str | None = Field(default=None, min_length=1, max_length=128)
    load_class: str | None = Field(default=None, alias="class", min_length=1, max_length=64)
    limit_kw: float | None = Field(default=None, strict=True, ge=0, le=_MAX_KW)
    limit_pct: float | None = Field(default=None, strict=True, ge=0, le=100)
    expires_at: AwareDatetime | None = Field(default=None, description="required except for clear")
    issued_by: str = Field(default="unknown", min_length=1, max_length=64)
    issued_at: AwareDatetime
    signature: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _consistent(self) -> OverrideMessage:
        if self.action == "clear":
            return self
        if (self.device_id is None) == (self.load_class is None):
            raise ValueError("name exactly one of device_id or class")
        if self.expires_at is None:
            raise ValueError("expires_at is required")
        if self.action == "limit" and self.limit_kw is None and self.limit_pct is None:
            raise ValueError("a limit needs limit_kw or limit_pct")
        return self


class DispatchAck(BaseModel):
    """`<prefix>/dispatch/ack`: published on every change of an event's status."""

    event_id: str
    status: Literal["accepted", "rejected", "active", "completed", "expired"]
    reason: str
    requested_kw: float | None
    achieved_kw: float | None
    at: AwareDatetime


class OverrideAck(BaseModel):
    """`<prefix>/override/ack`: the outcome of each override message."""

    override_id: str
    status: Literal["accepted", "rejected", "cleared"]
    reason: str
    at: AwareDatetime


class TelemetryMessage(BaseModel):
    """`<prefix>/telemetry`, every 2 s."""

    at: AwareDatetime
    site_kw: float = Field(description="verified: measured where devices report, else applied")
    planned_kw: float
    class_kw: dict[str, float]
    price_usd_per_mwh: float | None
    price_stale: bool
    site_ceiling_kw: float | None
    active_events: list[str]
    devices_total: int
    devices_available: int
    unavailable: list[str] = Field(description="at most 100 ids")


class SetpointOut(BaseModel):
    device_id: str
    kw: float
    rule: str
    reason: str


class DecisionMessage(BaseModel):
    """`<prefix>/decision`, whenever the setpoints change. Setpoints grouped by reason."""

    at: AwareDatetime
    planned_kw: float
    site_ceiling_kw: float | None
    price_usd_per_mwh: float | None
    reasons: dict[str, list[str]] = Field(description="reason -> device ids")
    changed: list[SetpointOut] = Field(description="devices whose setpoint changed (first 500)")

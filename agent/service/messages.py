"""The MQTT interface's messages as pydantic models: the contract docs/mqtt.md is generated from.

Times are ISO-8601 with an offset (a naive time is rejected: "10:00" in whose zone?). Unknown
fields are rejected so a misspelt `target_kW` cannot be silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

if TYPE_CHECKING:
    from agent.policy import PoolStatus

__all__ = [
    "BidStepOut",
    "ComplianceOut",
    "DecisionGroup",
    "DecisionMessage",
    "DeviceAnswer",
    "DeviceQuery",
    "DeviceSetpoint",
    "DispatchAck",
    "DispatchMessage",
    "EmergencyMessage",
    "FlexStep",
    "GridAck",
    "IntervalMissed",
    "OverrideAck",
    "OverrideMessage",
    "PeakWarningMessage",
    "PoolOut",
    "SetpointOut",
    "TelemetryMessage",
]

_ID = r"^[A-Za-z0-9_.:@/-]+$"
_MAX_KW = 10_000_000.0  # 10 GW: any larger figure is a typo, not a site


class _In(BaseModel):
    # strict kW fields: `true` is not 1 kW
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    message_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=_ID,
        description="unique per message; required when signed: a signed message is applied "
        "once, a second copy within the replay window is a duplicate",
    )  # fmt: skip
    key_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=_ID,
        description="which of the site's keys signed it (mqtt.hmac_keys); default the site key",
    )  # fmt: skip


class DispatchMessage(_In):
    """`<prefix>/dispatch`: the grid operator, QSE or site SCADA asks the site to limit or shed."""

    event_id: str = Field(min_length=1, max_length=128, pattern=_ID)
    kind: Literal["limit", "shed", "base_point", "release"] = Field(
        description="limit: keep the site at or below target_kw; shed: draw shed_kw less than "
        "the site's load when the event starts; base_point: an ERCOT SCED base point, consume "
        "base_point_kw, reached on the resource's ramp curve (the site file's ercot section), "
        "replacing the sender's previous base point; release: end the event early"
    )
    target_kw: float | None = Field(
        default=None, strict=True, ge=0, le=_MAX_KW, description="for limit"
    )
    shed_kw: float | None = Field(
        default=None, strict=True, gt=0, le=_MAX_KW, description="for shed"
    )
    base_point_kw: float | None = Field(
        default=None, strict=True, ge=0, le=_MAX_KW, description="for base_point"
    )
    emergency: bool = Field(
        default=False, strict=True,
        description="base_point: an emergency base point (the emergency ramp curve; followed "
        "before any normal one)",
    )  # fmt: skip
    start: AwareDatetime | None = Field(default=None, description="default: now")
    end: AwareDatetime | None = Field(default=None, description="default: until released")
    program: str = Field(
        default="manual", min_length=1, max_length=32, pattern=_ID,
        description="ERS, RRS, ECRS, NSRS, SCED, 4CP, price, manual, ...; a shed of ECRS or NSRS "
        "(an ERCOT deployment) is judged from its deadline, 10 or 30 minutes after it was asked",
    )  # fmt: skip
    issued_at: AwareDatetime
    signature: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="HMAC-SHA256 (hex) of '<site id>:<topic suffix>', a newline, and the message "
        "without this field, keys sorted, compact",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DispatchMessage:
        given = {name for name in ("target_kw", "shed_kw", "base_point_kw")
                 if getattr(self, name) is not None}  # fmt: skip
        wanted = {"limit": {"target_kw"}, "shed": {"shed_kw"}, "base_point": {"base_point_kw"},
                  "release": set()}[self.kind]  # fmt: skip
        if given != wanted:
            needs = (
                f"needs {', '.join(sorted(wanted))} and no other kW"
                if wanted
                else ("carries no target_kw, shed_kw or base_point_kw")
            )
            raise ValueError(f"a {self.kind.replace('_', ' ')} {needs}")
        if self.emergency and self.kind != "base_point":
            raise ValueError("emergency is for a base_point")
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


class _GridIn(_In):
    issued_at: AwareDatetime
    source: str = Field(
        default="unknown", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@/ -]+$",
        description="who says so: ERCOT, the QSE's name, SCADA, ...",
    )  # fmt: skip
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="when the condition lapses by itself (emergency: back to normal; 4CP: "
        "inactive); default: it holds until a later message changes it",
    )
    signature: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    def _expiry_after_issue(self) -> None:
        if self.expires_at is not None and self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")


class EmergencyMessage(_GridIn):
    """`<prefix>/grid/emergency`: the ERCOT grid condition, as the QSE or an operator feed says."""

    level: Literal["normal", "conservation", "eea1", "eea2", "eea3"] = Field(
        description="conservation appeal, or Energy Emergency Alert level 1-3; each maps to the "
        "posture in policy.emergency_postures"
    )

    @model_validator(mode="after")
    def _consistent(self) -> EmergencyMessage:
        self._expiry_after_issue()
        if self.level == "normal" and self.expires_at is not None:
            raise ValueError("normal has no expires_at: it is what an emergency expires to")
        return self


class PeakWarningMessage(_GridIn):
    """`<prefix>/grid/4cp`: a 4CP peak warning (a likely coincident-peak interval is near)."""

    active: bool = Field(strict=True, description="true: warning on; false: warning off")

    @model_validator(mode="after")
    def _consistent(self) -> PeakWarningMessage:
        self._expiry_after_issue()
        if not self.active and self.expires_at is not None:
            raise ValueError("an inactive warning has no expires_at")
        return self


class OverPeriod(BaseModel):
    start: AwareDatetime
    end: AwareDatetime | None


class IntervalMissed(BaseModel):
    """A 5-minute interval whose average load missed its base point's tolerance."""

    start: AwareDatetime
    average_kw: float
    set_point_kw: float


class ComplianceOut(BaseModel):
    """An event's compliance record, judged on verified site power every cycle."""

    baseline_kw: float | None = Field(description="site load drawn when the event started")
    cycles: int = Field(description="cycles judged since the event's start")
    compliant_cycles: int = Field(description="of which the verified load was under the ceiling")
    worst_over_kw: float = Field(description="largest verified excess over the ceiling")
    worst_at: AwareDatetime | None
    asked_kwh: float = Field(description="energy below the baseline the ceiling asked for")
    delivered_kwh: float = Field(description="energy below the baseline, as verified")
    judged_on: str = Field(
        default="device readings", description="the evidence judged: the site meter (at the "
        "point of interconnection) where the site has one, else the sum of device readings",
    )  # fmt: skip
    ramp_cycles: int = Field(default=0, description="cycles in the event's ramp window, before "
                             "it was judged (service.ramp_window_s)")  # fmt: skip
    over_periods: list[OverPeriod] = Field(
        default_factory=list, description="when it was over its ceiling after the ramp window "
        "(the first 20; `end` null while it lasts)",
    )  # fmt: skip
    over_periods_total: int = Field(default=0, description="how many times, all told")
    intervals: int = Field(default=0, description="base point: 5-minute clock intervals "
                           "closed, each judged on its average verified load against its "
                           "average set point (ERCOT's set point deviation)")  # fmt: skip
    intervals_within: int = Field(default=0, description="of which within the tolerance")
    intervals_missed: list[IntervalMissed] = Field(
        default_factory=list, description="the intervals outside it (the first 20)"
    )


class DispatchAck(BaseModel):
    """`<prefix>/dispatch/ack`: published on every change of an event's status."""

    event_id: str
    status: Literal[
        "accepted",
        "rejected",
        "active",
        "non_compliant",
        "completed",
        "expired",
        "cancelled",
        "suspended",
    ] = Field(
        description="active: the verified site load is under the ceiling; non_compliant: it "
        "went over after that (the reason gives the kW over and the cause); completed: it "
        "ended after being active (the reason says whether with a shortfall); cancelled: released "
        "before its start; suspended: the "
        "service is stopping with the event live (the reason says how the devices are left); "
        "on its restart the event's status is acked again"
    )
    reason: str
    requested_kw: float | None
    achieved_kw: float | None
    at: AwareDatetime
    compliance: ComplianceOut | None = Field(
        default=None, description="the event's record so far, judged every cycle"
    )
    expected_shortfall_kw: float | None = Field(
        default=None,
        description="declared at acceptance: the kW of the ceiling the site "
        "cannot reach without load this event may not cut (protected, critical); compliance "
        "is judged against the ceiling plus it",
    )
    mode: Literal["control", "shadow"] = Field(
        default="control",
        description="shadow: the site is in shadow mode, no device is "
        "written; a status says what would have been (judged on the load gridflex planned)",
    )
    seq: int | None = Field(
        default=None, description="the site's sequence number of this ack: acks of every kind "
        "share one sequence that only grows, across restarts; a copy has the same seq"
    )  # fmt: skip


class OverrideAck(BaseModel):
    """`<prefix>/override/ack`: the outcome of each override message."""

    override_id: str
    status: Literal[
        "accepted", "rejected", "cleared", "applied", "partial", "not_applied", "expired"
    ] = Field(
        description="accepted/rejected/cleared: the message; applied/partial/not_applied: what "
        "the engine made of it (published when that changes, with the rule in the way); expired"
    )
    reason: str
    at: AwareDatetime
    mode: Literal["control", "shadow"] = Field(
        default="control",
        description="shadow: the site is in shadow mode, no device is "
        "written; a status says what would have been (judged on the load gridflex planned)",
    )
    seq: int | None = Field(
        default=None, description="the site's sequence number of this ack: acks of every kind "
        "share one sequence that only grows, across restarts; a copy has the same seq"
    )  # fmt: skip


class GridAck(BaseModel):
    """`<prefix>/grid/ack`: the outcome of each grid/emergency and grid/4cp message."""

    topic: Literal["grid/emergency", "grid/4cp"]
    status: Literal["accepted", "rejected"]
    reason: str
    at: AwareDatetime
    mode: Literal["control", "shadow"] = Field(
        default="control",
        description="shadow: the site is in shadow mode, no device is "
        "written; a status says what would have been (judged on the load gridflex planned)",
    )
    seq: int | None = Field(
        default=None, description="the site's sequence number of this ack: acks of every kind "
        "share one sequence that only grows, across restarts; a copy has the same seq"
    )  # fmt: skip


AlarmKind = Literal["device_not_obeying", "device_down", "reading_not_believed", "price_stale",
                    "meter", "broker_down", "obligation_at_risk"]  # fmt: skip


class AlarmOut(BaseModel):
    """Something an operator must look at, and since when (first seen this run)."""

    kind: AlarmKind
    subject: str = Field(description="the devices (as id ranges), the event, or the site")
    detail: str
    since: AwareDatetime


class OverrideInForce(BaseModel):
    override_id: str
    target: str = Field(description="`device <id>` or `class <name>`")
    action: Literal["on", "off", "limit"]
    limit: str | None = Field(description="`12 kW` or `50 %` for a limit")
    issued_by: str
    expires_at: AwareDatetime


class FlexStep(BaseModel):
    value_usd_per_mwh: float
    kw: float


class BidStepOut(BaseModel):
    """Up to `to_kw` of curtailable load (from the previous step's), bought at no more than
    `usd_per_mwh`."""

    to_kw: float
    usd_per_mwh: float


class TelemetryMessage(BaseModel):
    """`<prefix>/telemetry`, every 2 s."""

    at: AwareDatetime
    site_kw: float = Field(
        description="the site's load on the evidence named in `evidence`: the site meter while "
        "it reads, else the devices' readings (measured where believed, else applied; a reading "
        "not believed at its worst case)"
    )
    evidence: Literal["site meter", "device readings"]
    devices_kw: float = Field(description="the sum of the devices' readings, as in site_kw")
    meter_alarm: str | None = Field(
        default=None,
        description="the site meter and the devices disagree beyond the tolerance: by how much "
        "and the suspects",
    )
    suspect: list[str] = Field(
        default_factory=list, description="devices whose readings are not believed (<= 100)"
    )
    planned_kw: float
    class_kw: dict[str, float]
    flexible_kw: float = Field(
        default=0.0,
        description="of planned_kw, the interruptible and flexible load: what a "
        "voluntary program (a fleet's portfolio shed) may take",
    )
    bid_to_buy: list[BidStepOut] = Field(
        default_factory=list,
        description="a site with an `ercot` section: its bid to buy as a Load Resource, the "
        "curtailable load it can reach by its classes' values, most valuable first (the price "
        "never rises with the kW; docs/ercot.md); empty without one",
    )  # fmt: skip
    flex_offer: list[FlexStep] = Field(
        default_factory=list,
        description="flexible_kw by what it forgoes per MWh (its class's value less the "
        "site's price, at least 0), cheapest first: a fleet's portfolio shed takes the cheapest "
        "steps across its sites first",
    )
    price_usd_per_mwh: float | None
    price_stale: bool
    site_ceiling_kw: float | None
    active_events: list[str]
    devices_total: int
    devices_available: int
    unavailable: list[str] = Field(description="at most 100 ids")
    grid_emergency: Literal["normal", "conservation", "eea1", "eea2", "eea3"] = Field(
        description="the grid condition in force (normal when none was received or it expired)"
    )
    grid_emergency_expires_at: AwareDatetime | None
    fourcp_warning: bool = Field(
        description="a 4CP peak warning is in force: active, not expired, and (with "
        "policy.fourcp) issued within its warning_stale_after_s"
    )
    fourcp_warning_expires_at: AwareDatetime | None
    mode: Literal["control", "shadow"] = Field(
        default="control",
        description="shadow: no device is written; planned_kw and the "
        "decision are what gridflex would have commanded",
    )
    capacity_kw: float = Field(default=0.0, description="every device at its rating: the "
                               "site's own scale")  # fmt: skip
    import_limit_kw: float | None = None
    device_states: dict[str, int] = Field(
        default_factory=dict, description="devices by state, each counted once in this order: "
        "no_driver, unavailable, implausible, suspect, not_obeying, ok; they sum to "
        "devices_total"
    )  # fmt: skip
    overrides: list[OverrideInForce] = Field(default_factory=list, description="in force now")
    alarms: list[AlarmOut] = Field(default_factory=list)


class SetpointOut(BaseModel):
    device_id: str
    kw: float
    rule: str
    reason: str


class DeviceQuery(_In):
    """`<prefix>/decision/request`: ask for devices' own setpoints, answered on
    `<prefix>/decision/device`."""

    device_ids: list[Annotated[str, StringConstraints(max_length=128, pattern=_ID)]] = Field(
        min_length=1, max_length=1000
    )
    request_id: Annotated[str, StringConstraints(max_length=128, pattern=_ID)] | None = None


class DeviceSetpoint(SetpointOut):
    load_class: str
    measured_kw: float | None = Field(description="its last reading; null when never read")
    state: str = Field(
        description="ok | settling | not_obeying | implausible | unavailable | no_driver"
    )


class DeviceAnswer(BaseModel):
    at: AwareDatetime
    request_id: str | None
    devices: list[DeviceSetpoint]
    unknown: list[str] = Field(description="asked-for ids the site does not have")
    error: str | None = Field(default=None, description="why the request was refused")


class DecisionGroup(BaseModel):
    """Devices of one class that one rule bound for one reason."""

    rule: str
    load_class: str
    reason: str
    devices: int
    kw: float = Field(description="their setpoints, summed")
    ids: str = Field(description="device id ranges: 'pdu-0001..pdu-0024, tank-0002'")


class PoolOut(BaseModel):
    """An inference pool as decided (docs/hybrid.md)."""

    pool: str
    needed: int = Field(description="servers its demand asks to serve")
    serving: int
    lent: int = Field(description="servers lent to flexible work")
    paused: int
    capped: int = Field(description="serving servers power-capped by a site ceiling")
    give_up_kw: float = Field(description="serving power given up to a ceiling")
    within_flex: bool = Field(description="what was given up is within the declared flex tier")
    reason: str

    @classmethod
    def of(cls, status: PoolStatus) -> PoolOut:
        return cls(pool=status.pool, needed=status.needed, serving=status.serving,
                   lent=status.lent, paused=status.paused, capped=status.capped,
                   give_up_kw=round(status.give_up_kw, 3), within_flex=status.within_flex,
                   reason=status.reason)  # fmt: skip


class DecisionMessage(BaseModel):
    """`<prefix>/decision`, whenever the setpoints change: compact at any fleet size, one group
    per (rule, class, reason); the audit log (`gridflex audit --device ID`) has each device's."""

    at: AwareDatetime
    planned_kw: float
    site_ceiling_kw: float | None
    price_usd_per_mwh: float | None
    groups: list[DecisionGroup] = Field(description="every device, by rule, class and reason")
    changed_devices: int = Field(description="devices whose setpoint changed this decision")
    changed: list[SetpointOut] = Field(description="the first 20 of them, with setpoints")
    pools: list[PoolOut] = Field(default_factory=list, description="hybrid sites' pools")

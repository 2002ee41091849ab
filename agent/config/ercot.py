"""The `ercot` section of the site file: the site as an ERCOT Load Resource behind its QSE, with
the ramp-rate curves and the deviation tolerance its base points are followed and judged on
(docs/ercot.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.domain.ercot import RampCurve, RampPoint, Resource

__all__ = ["Dnp3Config", "ErcotConfig", "RampPointConfig"]


class RampPointConfig(BaseModel):
    """One breakpoint of a ramp-rate curve, as ERCOT's resource parameters write it (MW/min
    there, kW/min here)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    at_kw: float = Field(ge=0, le=10_000_000)
    """from this consumption up to the next breakpoint"""
    up_kw_per_min: float = Field(gt=0, le=10_000_000)
    """how fast consumption may rise"""
    down_kw_per_min: float = Field(gt=0, le=10_000_000)
    """how fast consumption may fall"""


def _curve(points: list[RampPointConfig]) -> RampCurve:
    return RampCurve(tuple(RampPoint(p.at_kw, p.up_kw_per_min, p.down_kw_per_min)
                           for p in points))  # fmt: skip


class Dnp3Config(BaseModel):
    """The site's DNP3 outstation for its QSE's master (docs/ercot.md has the point map)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """the address the outstation listens on (the site's SCADA network)"""
    port: int = Field(default=20000, ge=1, le=65535)
    """its TCP port (20000 is DNP3's)"""
    address: int = Field(default=10, ge=0, le=65519)
    """the outstation's DNP3 address"""
    master_address: int = Field(default=1, ge=0, le=65519)
    """the QSE master's address it answers (0: any)"""


class ErcotConfig(BaseModel):
    """The site as one ERCOT Load Resource: SCED base points (MQTT dispatch `base_point`) are
    followed on its ramp curves and judged within its tolerance."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    resource: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """the Load Resource's name in ERCOT's model"""
    kind: Literal["clr"] = "clr"
    """clr: a Controllable Load Resource, dispatched by SCED base points"""
    normal_ramp: list[RampPointConfig] = Field(min_length=1)
    """the normal ramp-rate curve, breakpoints by consumption, the first at 0 kW"""
    emergency_ramp: list[RampPointConfig] | None = None
    """the emergency ramp-rate curve; null: the normal one"""
    tolerance_pct: float = Field(default=3.0, gt=0, le=100)
    """a base point is met within this share of it (Protocols 6.6.5.1, set point deviation)"""
    tolerance_min_kw: float = Field(default=3000.0, ge=0, le=10_000_000)
    """or within this many kW, whichever is more (3 MW in the Protocols; a small site sets its
    own)"""
    dnp3: Dnp3Config | None = None
    """the QSE's DNP3 link; null: base points come over MQTT dispatch only"""

    @model_validator(mode="after")
    def _curves_start_at_zero(self) -> ErcotConfig:
        for name in ("normal_ramp", "emergency_ramp"):
            points = getattr(self, name)
            if points is None:
                continue
            at = [p.at_kw for p in points]
            if at[0] != 0 or at != sorted(set(at)):
                raise ValueError(f"{name}: breakpoints must start at 0 kW and rise")
        return self

    def model(self) -> Resource:
        normal = _curve(self.normal_ramp)
        emergency = normal if self.emergency_ramp is None else _curve(self.emergency_ramp)
        return Resource(self.resource, self.kind, normal, emergency,
                        tolerance_pct=self.tolerance_pct,
                        tolerance_min_kw=self.tolerance_min_kw)  # fmt: skip

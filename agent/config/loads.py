"""The site file's loads: each load class with its value of energy (a fixed value, a miner's
hashprice breakeven, or inference's contract value) and each device (or group of identical
devices) with its rating, control and driver."""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.config.drivers import DriverConfig
from agent.config.strict import Strict
from agent.domain.fleet import ControlMode, DeviceKind, Priority

__all__ = ["DeviceConfig", "FixedValue", "InferenceValue", "LoadClassConfig", "MiningValue"]


# -- economics: every load class ends with a value of energy, its breakeven price ------------
class FixedValue(Strict):
    kind: Literal["fixed"]
    """`fixed`: the class's energy is worth a set price"""
    value_usd_per_mwh: float = Field(ge=-1000, le=100_000)
    """what a MWh drawn by this class is worth; above this price it stops"""

    def breakeven_usd_per_mwh(self) -> float:
        return self.value_usd_per_mwh


class MiningValue(Strict):
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


class InferenceValue(Strict):
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


class LoadClassConfig(Strict):
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


class DeviceConfig(Strict):
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

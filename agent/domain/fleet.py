"""The site's loads as data: load classes, devices, and the fleet in columnar form.

decide() runs every few seconds over up to 100,000 devices, so the fleet is kept as
numpy columns (one entry per device) rather than a list of objects; `DeviceSpec` is the
per-device view for people and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

import numpy as np
import numpy.typing as npt

__all__ = [
    "BoolArray",
    "ControlMode",
    "DeviceKind",
    "DeviceSpec",
    "Fleet",
    "FleetState",
    "FloatArray",
    "LoadClass",
    "Priority",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]


class Priority(IntEnum):
    """Who gives way first: lower values are shed first. Critical loads are never shed."""

    INTERRUPTIBLE = 0  # mining: sheds first
    FLEXIBLE = 1  # deferrable load (batch work, some cooling)
    PROTECTED = 2  # AI inference under contract: only when nothing else is left
    CRITICAL = 3  # controls, networking, life safety: never

    @property
    def label(self) -> str:
        return self.name.lower()


class ControlMode(StrEnum):
    ON_OFF = "on_off"  # all or nothing (switched PDU outlet)
    POWER_LIMIT = "power_limit"  # any kW between min_kw and rated_kw, or off
    PERCENT = "percent"  # same, commanded as a percentage of rated


class DeviceKind(StrEnum):
    MINER = "miner"
    GPU = "gpu"
    PDU_OUTLET = "pdu_outlet"
    COOLING = "cooling"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class LoadClass:
    """A group of loads that share a priority and a value of energy (their breakeven price)."""

    name: str
    priority: Priority
    value_usd_per_mwh: float  # the price above which running this load loses money
    follows: str | None = None  # cooling: draws in proportion to the running share of this class
    # a class that must give way before any other under a ceiling, whatever its value (a
    # contract says so); otherwise classes give way by value, least valuable MWh first
    gives_way_first: bool = False
    # a follower's draw as a share of its rating at a share of its leader's: points
    # (leader share, follower share), both 0..1, interpolated; None: the same share
    follow_curve: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    device_id: str
    load_class: str
    kind: DeviceKind
    rated_kw: float
    min_kw: float
    control_mode: ControlMode
    min_on_s: float = 0.0
    min_off_s: float = 0.0
    max_ramp_kw_per_s: float | None = None
    idle_kw: float = 0.0  # what it still draws when commanded off (a GPU server with jobs paused)


@dataclass(frozen=True, eq=False)
class Fleet:
    """Every device of the site, in columns indexed like `device_ids`."""

    classes: tuple[LoadClass, ...]
    device_ids: tuple[str, ...]
    kinds: tuple[DeviceKind, ...]
    modes: tuple[ControlMode, ...]
    class_index: IntArray
    rated_kw: FloatArray
    min_kw: FloatArray
    continuous: BoolArray  # power_limit or percent: can be throttled between min_kw and rated_kw
    min_on_s: FloatArray
    min_off_s: FloatArray
    ramp_kw_per_s: FloatArray  # inf where unlimited
    idle_kw: FloatArray
    index_of: dict[str, int] = field(repr=False)
    members: tuple[IntArray, ...] = field(repr=False)  # device indices of each class
    priority: npt.NDArray[np.int8] = field(repr=False)

    @classmethod
    def build(cls, classes: Sequence[LoadClass], devices: Sequence[DeviceSpec]) -> Fleet:
        class_pos = {c.name: i for i, c in enumerate(classes)}
        missing = {d.load_class for d in devices} - class_pos.keys()
        if missing:
            raise ValueError(f"devices name unknown load classes: {sorted(missing)}")
        class_index = np.fromiter(
            (class_pos[d.load_class] for d in devices), dtype=np.int32, count=len(devices)
        )
        ids = tuple(d.device_id for d in devices)
        if len(set(ids)) != len(ids):
            raise ValueError("device ids must be unique")
        priorities = np.array([int(c.priority) for c in classes], dtype=np.int8)
        return cls(
            classes=tuple(classes),
            device_ids=ids,
            kinds=tuple(d.kind for d in devices),
            modes=tuple(d.control_mode for d in devices),
            class_index=class_index,
            rated_kw=np.array([d.rated_kw for d in devices], dtype=np.float64),
            min_kw=np.array([d.min_kw for d in devices], dtype=np.float64),
            continuous=np.array(
                [d.control_mode is not ControlMode.ON_OFF for d in devices], dtype=np.bool_
            ),
            min_on_s=np.array([d.min_on_s for d in devices], dtype=np.float64),
            min_off_s=np.array([d.min_off_s for d in devices], dtype=np.float64),
            ramp_kw_per_s=np.array(
                [np.inf if d.max_ramp_kw_per_s is None else d.max_ramp_kw_per_s for d in devices],
                dtype=np.float64,
            ),
            idle_kw=np.array([d.idle_kw for d in devices], dtype=np.float64),
            index_of={device_id: i for i, device_id in enumerate(ids)},
            members=tuple(
                np.flatnonzero(class_index == i).astype(np.int32) for i in range(len(classes))
            ),
            priority=priorities[class_index] if len(devices) else np.zeros(0, dtype=np.int8),
        )

    def __len__(self) -> int:
        return len(self.device_ids)

    def class_named(self, name: str) -> int:
        for i, load_class in enumerate(self.classes):
            if load_class.name == name:
                return i
        raise KeyError(name)

    def spec(self, device_id: str) -> DeviceSpec:
        i = self.index_of[device_id]
        ramp = float(self.ramp_kw_per_s[i])
        return DeviceSpec(
            device_id=device_id,
            load_class=self.classes[int(self.class_index[i])].name,
            kind=self.kinds[i],
            rated_kw=float(self.rated_kw[i]),
            min_kw=float(self.min_kw[i]),
            control_mode=self.modes[i],
            min_on_s=float(self.min_on_s[i]),
            min_off_s=float(self.min_off_s[i]),
            max_ramp_kw_per_s=None if np.isinf(ramp) else ramp,
            idle_kw=float(self.idle_kw[i]),
        )


@dataclass(frozen=True, eq=False)
class FleetState:
    """The fleet with what the drivers last saw of each device: reachable or not, measured power."""

    fleet: Fleet
    available: BoolArray
    measured_kw: FloatArray  # nan where unknown
    # the verified site load the shell measured (None: decide() sums what it knows)
    site_kw: float | None = None
    # load the site meter sees that no device reports (0 without a site meter): planned as a
    # fixed draw, so the devices are planned to the ceiling less it
    unmetered_kw: float = 0.0
    # devices whose meter is not believed (its relays still answer): switched off first among
    # load of equal value, so what is shed is shed where the relays, not the meter, say so
    doubtful: BoolArray | None = None
    # what devices planned around (not obeying) draw beyond their commands, by their meters or
    # their worst case: planned for, but with unmetered_kw never a reason to cut protected load
    doubt_kw: float = 0.0

    @classmethod
    def all_available(cls, fleet: Fleet) -> FleetState:
        n = len(fleet)
        return cls(fleet, available=np.ones(n, dtype=np.bool_), measured_kw=np.full(n, np.nan))

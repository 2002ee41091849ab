"""Move power to where it is worth most: a device the shed left short takes kW from running
devices worth less per MWh, the cheapest first.

Shedding and filling back work group by group, so a shed can end with a $1,750/MWh class
throttled to its minimum while a $213/MWh class still runs, or with a whole 5 kW $1,190/MWh
miner left off for want of 1.3 kW that a $1,550/MWh throttled load could give. A taker (a
device the shed cut, most valuable first) gets kW from the cheapest givers: first what
throttled givers draw above their floor, then whole givers switched off (an on/off device, or
a throttled one already at its floor; never one held on by its dwell or an engineer). A move
is made only when what the taker earns is worth more than what the givers give up, and kept
only when the site, with its cooling re-planned, is still under the ceiling. Each giver's
reason names the trade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.domain.fleet import BoolArray
from agent.policy.decision import Rule
from agent.policy.follow import apply_followers
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["Takers", "exchange"]

_MAX_MOVES = 8  # trades per shed
_MAX_TRIES = 32  # takers looked at per shed (most valuable first)
_MAX_LOOKED = 256  # givers looked at one by one for a cover that passes over large ones


@dataclass(frozen=True, slots=True)
class Takers:
    """The devices a shed cut, most valuable first (positions into `cut`), and what each takes
    to come back: its ceiling before the shed, the cooling per kW it brings, the room it needs
    beyond that when it was off (a margin against switching on and off as the slack moves)."""

    cut: Index
    full_hi: FloatArray
    with_cooling: FloatArray
    margin_kw: FloatArray
    cooling_per_kw: FloatArray  # per device of the fleet: what a giver's cooling frees with it


def exchange(plan: Plan, takers: Takers, *, ceiling_kw: float, was_on: BoolArray, rule: Rule,
             text: str) -> list[int]:  # fmt: skip
    """Trade power from cheaper running devices to takers; returns the positions (in
    `takers.cut`) that came back whole."""
    fleet = plan.fleet
    value, sheddable = plan.values()
    last_in_line = np.array([c.gives_way_first for c in fleet.classes])[fleet.class_index]
    whole: list[int] = []
    moves = 0
    givers: _Givers | None = None  # built once, and again only after a trade changed the plan
    total_kw = plan.total_kw()
    for pos in range(min(len(takers.cut), _MAX_TRIES)):
        i = int(takers.cut[pos])
        if moves >= _MAX_MOVES or ceiling_kw - total_kw < -EPS_KW:
            break
        if last_in_line[i]:  # a class that must give way first takes from no one
            continue
        asked = _asked(plan, takers, pos, i)
        if asked is None:
            continue
        least_kw, most_kw = asked
        slack_kw = max(ceiling_kw - total_kw, 0.0)
        if givers is None:
            givers = _Givers.of(plan, value, sheddable, takers.cooling_per_kw)
        # what the taker could earn at most against the least the room could cost
        floor_usd = givers.cheapest_usd_per_mwh * max(least_kw - slack_kw, 0.0)
        if value[i] * _device_kw(plan, takers, pos, i, most_kw) <= floor_usd + EPS_KW:
            continue
        taken = givers.cheapest(least_kw - slack_kw, most_kw - slack_kw, besides=i)
        if taken is None:
            continue
        used, kw, off, freed_kw = taken
        device_kw = _device_kw(plan, takers, pos, i, slack_kw + freed_kw)
        if value[i] * device_kw <= float((value[used] * kw).sum()) + EPS_KW:
            continue
        saved_hi = plan.hi.copy()
        plan.hi[used] = np.where(off, 0.0, givers.setpoint[used] - kw)
        plan.hi[i] = plan.feasible(np.array([i]))[0] + device_kw
        apply_followers(plan, was_on)
        if plan.total_kw() > ceiling_kw + EPS_KW:  # the cooling estimate was short: undo
            plan.hi[:] = saved_hi
            apply_followers(plan, was_on)
            continue
        given_kw = float(kw.sum())
        note = (f"; {given_kw:.1f} kW given up for {fleet.device_ids[i]}: "
                f"{device_kw:.1f} kW at ${value[i]:,.0f}/MWh is worth more than "
                f"{given_kw:.1f} kW at up to ${float(value[used].max()):,.0f}/MWh")  # fmt: skip
        plan.describe(used, rule, text + note, only_unbound=False)
        plan.bound[used] = True
        givers, total_kw, moves = None, plan.total_kw(), moves + 1
        if plan.hi[i] >= takers.full_hi[pos] - EPS_KW:
            whole.append(pos)
    return whole


def _asked(plan: Plan, takers: Takers, pos: int, i: int) -> tuple[float, float] | None:
    """The least and the most site kW taker i can use (its draw over what it draws now, idle
    included, its cooling and its margin); None when it is already whole."""
    fleet = plan.fleet
    now_kw = float(plan.feasible(np.array([i]))[0])
    full_kw = float(min(takers.full_hi[pos], fleet.rated_kw[i]))
    if now_kw >= full_kw - EPS_KW:
        return None
    most_kw = _site_kw(plan, takers, pos, i, full_kw)
    if not fleet.continuous[i]:
        return most_kw, most_kw
    start_kw = float(fleet.min_kw[i]) if now_kw <= EPS_KW else now_kw + EPS_KW
    return _site_kw(plan, takers, pos, i, max(start_kw, EPS_KW)), most_kw


def _site_kw(plan: Plan, takers: Takers, pos: int, i: int, to_kw: float) -> float:
    """What the site draws more with taker i at `to_kw`."""
    now_kw, now_drawn_kw = _now(plan, i)
    draws_kw = max(to_kw, float(plan.idle_kw[i]))
    if not plan.fleet.continuous[i]:
        draws_kw = float(plan.on_kw[i])
    cooling_kw = (float(takers.with_cooling[pos]) - 1.0) * (to_kw - now_kw)
    margin_kw = float(takers.margin_kw[pos]) if now_kw <= EPS_KW else 0.0
    return draws_kw - now_drawn_kw + cooling_kw + margin_kw


def _device_kw(plan: Plan, takers: Takers, pos: int, i: int, room_kw: float) -> float:
    """The kW taker i gains from `room_kw` of site room."""
    fleet = plan.fleet
    now_kw, now_drawn_kw = _now(plan, i)
    full_kw = float(min(takers.full_hi[pos], fleet.rated_kw[i]))
    if not fleet.continuous[i]:
        return full_kw - now_kw
    per_kw = float(takers.with_cooling[pos])
    margin_kw = float(takers.margin_kw[pos]) if now_kw <= EPS_KW else 0.0
    to_kw = (room_kw - margin_kw + now_drawn_kw + (per_kw - 1.0) * now_kw) / per_kw
    return min(full_kw, to_kw) - now_kw


def _now(plan: Plan, i: int) -> tuple[float, float]:
    """Taker i's setpoint and draw in the plan as it stands."""
    one = np.array([i])
    return float(plan.feasible(one)[0]), float(plan.drawn_kw(one)[0])


@dataclass(frozen=True, slots=True)
class _Givers:
    """What running devices can give, cheapest first: each throttled one's kW above its floor
    (divisible), then each device switched off whole (not divisible)."""

    setpoint: FloatArray
    device: Index
    kw: FloatArray
    off: BoolArray  # a switch-off (whole) rather than a throttle
    value: FloatArray
    per_kw: FloatArray  # site kW freed per kW of the giver (its cooling goes with it)
    throttles: Index  # the pieces that are throttles
    cum_kw: FloatArray  # of every piece, cheapest first
    cum_throttle_kw: FloatArray  # of the throttles alone

    @property
    def cheapest_usd_per_mwh(self) -> float:
        return float(self.value[0]) if len(self.value) else float("inf")

    @classmethod
    def of(cls, plan: Plan, value: FloatArray, sheddable: BoolArray,
           cooling_per_kw: FloatArray) -> _Givers:  # fmt: skip
        fleet = plan.fleet
        setpoint = plan.feasible()
        runs = (setpoint > EPS_KW) & plan.available & ~plan.follower & ~plan.forced
        runs &= sheddable & np.isfinite(value)
        floor = np.maximum(fleet.min_kw, plan.lo)
        throttle = np.flatnonzero(runs & fleet.continuous & (setpoint - floor > EPS_KW))
        drawn = plan.drawn_kw()
        # a device held on (dwell, a forced floor) cannot be switched off
        can_stop = np.flatnonzero(runs & (plan.lo <= EPS_KW) & (drawn - plan.idle_kw > EPS_KW))
        stop_kw = np.where(fleet.continuous[can_stop], floor[can_stop], drawn[can_stop])
        device = np.concatenate([throttle, can_stop])
        kw = np.concatenate([setpoint[throttle] - floor[throttle],
                             stop_kw - plan.idle_kw[can_stop]])  # fmt: skip
        off = np.concatenate([np.zeros(len(throttle), np.bool_), np.ones(len(can_stop), np.bool_)])
        # cheapest first; at one value every throttle before any switch-off (a throttled
        # device is switched off only from its floor)
        order = np.lexsort((off, value[device]))
        device, off = device[order], off[order]
        per_kw = 1.0 + cooling_per_kw[device]
        kw = kw[order] * per_kw  # in site kW
        throttles = np.flatnonzero(~off)
        return cls(setpoint, device, kw, off, value[device], per_kw, throttles, np.cumsum(kw),
                   np.cumsum(kw[throttles]))  # fmt: skip

    def cheapest(self, least_kw: float, most_kw: float, *,
                 besides: int) -> tuple[Index, FloatArray, BoolArray, float] | None:  # fmt: skip
        """The cheapest givers for at least least_kw and at most about most_kw of the site's
        kW, cooling included (a whole switch-off may overshoot it): (devices, kW each gives,
        switched off, the site kW freed); None when there is not enough. Of three covers,
        the one that costs less: throttles alone, every piece cheapest first, or cheapest
        first passing over whole devices larger than what is still wanted (a cheap whole
        device may give far more than is needed)."""
        if most_kw <= EPS_KW:
            return None
        # no cover needs more pieces than add up to most_kw, plus the one it may leave out
        end = int(np.searchsorted(self.cum_throttle_kw, most_kw, side="left")) + 2
        throttles = self.throttles[:end]
        end = int(np.searchsorted(self.cum_kw, most_kw, side="left")) + 2
        every = np.arange(min(end, len(self.off)))
        covers = (throttles, every, self._fitting(np.arange(len(self.off)), most_kw))
        options = [_cover(self, pieces, least_kw, most_kw, besides) for pieces in covers]
        found = [o for o in options if o is not None]
        if not found:
            return None
        best = min(found, key=lambda o: o[3])
        return best[0], best[1], best[2], best[4]

    def _fitting(self, pieces: Index, most_kw: float) -> Index:
        """`pieces`, cheapest first, without the switch-offs that give more than is still
        wanted when they come, and with the cheapest such switch-off at the end when the rest
        fall short. Looks at the first _MAX_LOOKED pieces."""
        kept: list[int] = []
        over: int | None = None  # the least costly switch-off passed over
        wanted_kw = most_kw
        for piece in pieces[:_MAX_LOOKED].tolist():
            if wanted_kw <= EPS_KW:
                break
            kw = float(self.kw[piece])
            if self.off[piece] and kw > wanted_kw + EPS_KW:
                cost = kw * float(self.value[piece])
                if over is None or cost < float(self.kw[over] * self.value[over]):
                    over = piece
                continue
            kept.append(piece)
            wanted_kw -= kw
        if wanted_kw > EPS_KW and over is not None:
            kept.append(over)
        return np.asarray(kept, dtype=np.intp)


def _cover(givers: _Givers, pieces: Index, least_kw: float, most_kw: float,
           besides: int) -> tuple[Index, FloatArray, BoolArray, float, float] | None:  # fmt: skip
    """Take `pieces` (in cheapest-first order) until most_kw of the site is given: (devices,
    kW each gives, switched off, the value given up per hour, the site kW freed); None when
    they give less than least_kw."""
    pieces = pieces[givers.device[pieces] != besides]
    kw = givers.kw[pieces]
    end = int(np.searchsorted(np.cumsum(kw), most_kw - EPS_KW, side="left")) + 1
    pieces, kw = pieces[:end], kw[:end]
    device, off = givers.device[pieces], givers.off[pieces]
    want = np.maximum(most_kw - (np.cumsum(kw) - kw), 0.0)
    # a throttle gives what is still wanted; a switch-off all or nothing
    given = np.where(off, kw, np.minimum(kw, want))
    if float(given.sum()) < least_kw - EPS_KW:
        return None
    used = given > EPS_KW
    if not used.any():
        return None  # the slack alone is room enough: fill_back's to take, not a trade
    freed_kw = float(given[used].sum())
    given = given[used] / givers.per_kw[pieces][used]  # the givers' own kW
    device, off = device[used], off[used]
    cost = float((givers.value[pieces][used] * given).sum())
    # a device both throttled and switched off is listed twice: once, switched off, with both
    unique: Index = np.unique(device).astype(np.intp)
    totals: FloatArray = np.bincount(np.searchsorted(unique, device), weights=given).astype(
        np.float64
    )
    stopped: BoolArray = np.zeros(len(unique), dtype=np.bool_)
    np.logical_or.at(stopped, np.searchsorted(unique, device), off)
    return unique, totals, stopped, cost, freed_kw

"""Pack the ceiling on small sites: the most valuable set of devices that fits under it.

Shedding in merit order and filling back (merit.py, fill.py, exchange.py) gives up the cheapest
MWh first, which is the optimum while the steps are small next to the ceiling. On a small site
a few large whole devices make the ceiling a knapsack instead: under 41 kW, three 3.7 kW
$185/MWh miners and two 3.4 kW $1,958/MWh ones ($15/h) are worth less than one 23 kW $917/MWh
machine ($21/h), and no trade of one device for cheaper ones finds that. So, when the devices
the shed may move are few, pack() searches every count of each kind of device (devices of one
class, size and state are alike) by branch and bound: kinds most valuable per site kW first,
each count from the most that fits down, a throttled kind's power above its minimum filled
last, most valuable first, and a branch dropped when even its fractional fill (every kind
divisible) is worth no more than the best found. Cooling is counted at its share of each
leader kW while searching and as follow.py plans it for each set found; the sets found are
applied best first, their cooling re-planned, and the first that keeps the site under the
ceiling replaces the plan when it is worth more. A device that was off needs the same margin
as in fill_back to come on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agent.domain.fleet import BoolArray, Priority
from agent.policy.decision import Rule
from agent.policy.fill import MARGIN, Before
from agent.policy.follow import apply_followers, follower_kw
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["pack"]

EXACT_UP_TO = 64  # devices the search may move; on larger sites the steps are small
_MAX_NODES = 5_000  # of one search (about 0.1 s): beyond it the best sets found so far are tried
_KEPT = 4  # best sets tried against the exact cooling, best first
_BISECTIONS = 16  # to find how far a throttled kind can rise before its cooling steps up
_BETTER = 1e-4  # a set replaces the plan only when worth this share more: no churn on ties


@dataclass(frozen=True, slots=True)
class _Kind:
    """Alike devices the search may move: how many run is its choice."""

    devices: Index
    value: float  # $/MWh of a kW of setpoint
    continuous: bool
    full_kw: float  # the setpoint of one running at full
    min_kw: float  # the least a running one is set to (on/off: full)
    step_kw: float  # site kW one adds at its least, its cooling estimated
    per_kw: float  # site kW per kW of setpoint above the least (1 + its cooling estimated)
    was_on: bool
    load_class: int
    own_step_kw: float  # what one adds itself at its least, without cooling

    @property
    def density(self) -> float:
        """$/h per site kW at full."""
        site_kw = self.step_kw + (self.full_kw - self.min_kw) * self.per_kw
        return self.value * self.full_kw / site_kw if site_kw > EPS_KW else 0.0


def pack(plan: Plan, movable: BoolArray, before: Before, ceiling_kw: float, was_on: BoolArray,
         *, cooling: FloatArray, rule: Rule, text: str) -> None:  # fmt: skip
    """Replace the plan of `movable` devices by the most valuable set under `ceiling_kw` when
    one is worth more (only when they are at most EXACT_UP_TO); `cooling`: fill.cooling_per_kw
    of the plan, the estimate the search starts from."""
    idx = np.flatnonzero(movable)
    if len(idx) == 0 or len(idx) > EXACT_UP_TO:
        return
    value, _ = plan.values()
    now_hi = plan.hi.copy()
    now_usd = float((value[idx] * plan.feasible(idx)).sum()) / 1000
    plan.hi[idx] = 0.0
    apply_followers(plan, was_on)
    room_kw = ceiling_kw - plan.total_kw()
    kinds = _kinds(plan, idx, value, cooling=cooling[idx], before=before, was_on=was_on)
    exact = _Cooling.at_base(plan, idx, was_on)
    found = _Search(kinds, room_kw, MARGIN * ceiling_kw, now_usd * (1 + _BETTER), exact).run()
    for _usd, counts, extra_kw in found:
        new_usd = _apply(plan, kinds, counts, extra_kw, value=value, ceiling_kw=ceiling_kw,
                         was_on=was_on)  # fmt: skip
        if new_usd > now_usd * (1 + _BETTER) + EPS_KW:
            _describe(plan, idx, now_hi, before=before, rule=rule, text=
                      f"{text}; packed under the ceiling: the most valuable set that fits "
                      f"(${new_usd:,.2f}/h against ${now_usd:,.2f}/h by merit order)")  # fmt: skip
            return
    plan.hi[:] = now_hi
    apply_followers(plan, was_on)


def _kinds(plan: Plan, idx: Index, value: FloatArray, *, cooling: FloatArray, before: Before,
           was_on: BoolArray) -> list[_Kind]:  # fmt: skip
    """The movable devices `idx` by kind; `cooling`: each one's cooling per kW."""
    fleet = plan.fleet
    full = np.minimum(before.hi[idx], fleet.rated_kw[idx])
    continuous = fleet.continuous[idx]
    minimum = np.where(continuous, np.maximum(fleet.min_kw[idx], EPS_KW), full)
    drawn_at_least = np.where(continuous, minimum, plan.on_kw[idx])
    idle = plan.idle_kw[idx]
    own_step = np.maximum(drawn_at_least, idle) - idle
    step = own_step + cooling * minimum
    ok = (full >= minimum - EPS_KW) & (full > EPS_KW)
    keys = np.stack([value[idx], continuous, full, minimum, step, 1.0 + cooling, was_on[idx],
                     fleet.class_index[idx], own_step], 1)  # fmt: skip
    keys = np.round(keys[ok], 9)
    rows, inverse = np.unique(keys, axis=0, return_inverse=True)
    members = idx[ok]
    kinds = []
    for k, row in enumerate(rows):
        value_of, continuous_, full_, min_, step_, per_kw, on, load_class, own = row.tolist()
        kinds.append(_Kind(members[inverse.ravel() == k], value_of, bool(continuous_), full_,
                           min_, step_, per_kw, bool(on), int(load_class), own))  # fmt: skip
    return sorted(kinds, key=lambda k: -k.density)


class _Search:
    """Branch and bound over how many of each kind run."""

    def __init__(self, kinds: list[_Kind], room_kw: float, margin_kw: float,
                 incumbent_usd: float, cooling: _Cooling) -> None:  # fmt: skip
        self.kinds = kinds
        self.cooling = cooling
        self.room_kw = room_kw
        self.margin_kw = margin_kw
        self.incumbent_usd = incumbent_usd
        self.nodes = 0
        self.found: list[tuple[float, tuple[int, ...], tuple[float, ...]]] = []

    def run(self) -> list[tuple[float, tuple[int, ...], tuple[float, ...]]]:
        if self.room_kw > EPS_KW:
            self._branch(0, self.room_kw, 0.0, (), charged=False)
        return sorted(self.found, key=lambda f: -f[0])

    def _floor_usd(self) -> float:
        """What a set must beat: the plan, and the worst of the best sets kept."""
        if len(self.found) < _KEPT:
            return self.incumbent_usd
        return max(self.incumbent_usd, min(f[0] for f in self.found))

    def _branch(self, pos: int, room_kw: float, usd: float, counts: tuple[int, ...], *,
                charged: bool) -> None:  # fmt: skip
        self.nodes += 1
        if pos == len(self.kinds):
            self._leaf(room_kw, usd, counts, charged=charged)
            return
        if self.nodes > _MAX_NODES or self._bound(pos, room_kw, usd, counts) <= self._floor_usd():
            return
        kind = self.kinds[pos]
        margin_kw = 0.0 if kind.was_on or charged else self.margin_kw
        fits = (room_kw - margin_kw) / kind.step_kw if kind.step_kw > EPS_KW else len(kind.devices)
        most = min(len(kind.devices), max(int(fits + 1e-9), 0))
        for k in range(most, -1, -1):
            spent_kw = k * kind.step_kw + (margin_kw if k else 0.0)
            self._branch(pos + 1, room_kw - spent_kw, usd + k * kind.value * kind.min_kw / 1000,
                         (*counts, k), charged=charged or (k > 0 and not kind.was_on))  # fmt: skip

    def _extras(self, counts: tuple[int, ...]) -> list[tuple[float, float, int]]:
        """(density, site kW, kind) of what running throttled kinds may add above their least,
        most valuable first."""
        extras = []
        for pos, k in enumerate(counts):
            kind = self.kinds[pos]
            if k and kind.continuous and kind.full_kw > kind.min_kw + EPS_KW:
                site_kw = k * (kind.full_kw - kind.min_kw) * kind.per_kw
                extras.append((kind.value / kind.per_kw / 1000, site_kw, pos))
        return sorted(extras, key=lambda e: -e[0])

    def _bound(self, pos: int, room_kw: float, usd: float, counts: tuple[int, ...]) -> float:
        """At most what this branch can be worth: everything left divisible."""
        items = [(d, kw) for d, kw, _ in self._extras(counts)]
        for kind in self.kinds[pos:]:
            # a kind's least and what it may add above it apart: what a device draws when off
            # is drawn anyway, so its first kW may be worth more per site kW than the rest
            count = len(kind.devices)
            items.append((kind.value * kind.min_kw / max(kind.step_kw, EPS_KW) / 1000,
                          count * kind.step_kw))  # fmt: skip
            items.append((kind.value / kind.per_kw / 1000,
                          count * (kind.full_kw - kind.min_kw) * kind.per_kw))  # fmt: skip
        items.sort(key=lambda i: -i[0])
        for density, kw in items:
            if room_kw <= EPS_KW:
                break
            usd += density * min(kw, room_kw)
            room_kw -= kw
        return usd

    def _leaf(self, room_kw: float, usd: float, counts: tuple[int, ...], *,
              charged: bool) -> None:  # fmt: skip
        at_least_usd = usd
        extra = [0.0] * len(counts)
        extras = self._extras(counts)
        for density, site_kw, pos in extras:
            if room_kw <= EPS_KW:
                break
            used_kw = min(site_kw, room_kw)
            extra[pos] = used_kw / self.kinds[pos].per_kw  # kW of setpoint
            usd += density * used_kw
            room_kw -= used_kw
        if usd <= self._floor_usd():
            return  # the cooling estimated is never more than the cooling needed
        # the cooling this set needs as follow.py plans it: whole units round up, and a unit
        # covers a range of its leader's kW, so the estimate's fill may overshoot (lowered,
        # least valuable first) or stop short of a unit's range (raised, by bisection: the
        # cooling only grows with its leader). Raised two ways: in the estimate's order, and
        # from the minimums by value alone (where the units running cover a leader's kW its
        # cooling costs nothing more)
        by_value = sorted(extras, key=lambda e: -self.kinds[e[2]].value)
        best: tuple[float, list[float]] | None = None
        for start, order in ((extra, extras), ([0.0] * len(counts), by_value)):
            kw = list(start)
            worth = usd if start is extra else at_least_usd
            worth_now = self._cut(counts, kw, extras, worth, charged=charged)
            if worth_now is None:
                continue
            worth_now = self._raise(counts, kw, order, worth_now, charged=charged)
            if best is None or worth_now > best[0]:
                best = (worth_now, kw)
        if best is None or best[0] <= self._floor_usd():
            return
        self.found.append((best[0], counts, tuple(best[1])))
        if len(self.found) > _KEPT:
            self.found.remove(min(self.found, key=lambda f: f[0]))

    def _fits(self, counts: tuple[int, ...], extra: list[float], *, charged: bool) -> bool:
        return self._site_kw(counts, extra, charged=charged) <= self.room_kw + EPS_KW

    def _cut(self, counts: tuple[int, ...], extra: list[float],
             extras: list[tuple[float, float, int]], usd: float, *,
             charged: bool) -> float | None:  # fmt: skip
        """Lower `extra` in place by what the set overshoots, least valuable first, a site kW
        for a kW; its worth, or None when it cannot fit."""
        for _ in range(3):
            over_kw = self._site_kw(counts, extra, charged=charged) - self.room_kw
            if over_kw <= EPS_KW:
                return usd
            for _density, _kw, pos in reversed(extras):
                cut_kw = min(extra[pos], over_kw)
                extra[pos] -= cut_kw
                usd -= cut_kw * self.kinds[pos].value / 1000
                over_kw -= cut_kw
        return usd if self._fits(counts, extra, charged=charged) else None

    def _raise(self, counts: tuple[int, ...], extra: list[float],
               order: list[tuple[float, float, int]], usd: float, *,
               charged: bool) -> float:  # fmt: skip
        """Raise `extra` in place, in `order`, each as far as it fits; its worth."""
        for _density, _kw, pos in order:
            kind = self.kinds[pos]
            low_kw, high_kw = 0.0, counts[pos] * (kind.full_kw - kind.min_kw) - extra[pos]
            if high_kw <= 1e-3:
                continue
            trial = list(extra)
            trial[pos] += high_kw
            if not self._fits(counts, trial, charged=charged):
                for _ in range(_BISECTIONS):
                    trial[pos] = extra[pos] + (low_kw + high_kw) / 2
                    fits = self._fits(counts, trial, charged=charged)
                    low_kw, high_kw = ((trial[pos] - extra[pos], high_kw) if fits
                                       else (low_kw, trial[pos] - extra[pos]))  # fmt: skip
                high_kw = low_kw
            # (the next may still fit where this one met its next cooling unit)
            extra[pos] += high_kw
            usd += high_kw * kind.value / 1000
        return usd

    def _site_kw(self, counts: tuple[int, ...], extra: list[float], *, charged: bool) -> float:
        """What a set adds to the site with every device off, its cooling and margin included."""
        own_kw = 0.0
        leader_kw: dict[int, float] = {}
        for kind, k, add_kw in zip(self.kinds, counts, extra, strict=True):
            own_kw += k * kind.own_step_kw + add_kw
            kw = k * kind.min_kw + add_kw
            leader_kw[kind.load_class] = leader_kw.get(kind.load_class, 0.0) + kw
        return own_kw + self.cooling.added_kw(leader_kw) + (self.margin_kw if charged else 0.0)


@dataclass(frozen=True, slots=True)
class _Cooling:
    """The cooling a set needs, as follow.py plans it: per follower class, its leader's share
    from what does not move plus the kinds of its class that run."""

    plan: Plan
    was_on: BoolArray
    followers: tuple[tuple[int, int, float, float], ...]  # (class, leader, fixed kW, rated kW)
    base_kw: float  # the followers' draw with every movable device off

    @classmethod
    def at_base(cls, plan: Plan, movable: Index, was_on: BoolArray) -> _Cooling:
        """Built with the movable devices off in the plan."""
        fleet = plan.fleet
        followers = []
        for pos, load_class in enumerate(fleet.classes):
            if load_class.follows is None or load_class.priority is Priority.CRITICAL:
                continue
            leader = fleet.class_named(load_class.follows)
            members = fleet.members[leader]
            followers.append((pos, leader, float(plan.feasible(members).sum()),
                              float(fleet.rated_kw[members].sum())))  # fmt: skip
        made = cls(plan, was_on, tuple(followers), 0.0)
        return replace(made, base_kw=made.drawn_kw({}))

    def drawn_kw(self, leader_kw: dict[int, float]) -> float:
        total_kw = 0.0
        for pos, leader, fixed_kw, rated_kw in self.followers:
            kw_of_leader = fixed_kw + leader_kw.get(leader, 0.0)
            share = min(1.0, kw_of_leader / rated_kw) if rated_kw else 0.0
            idx, kw = follower_kw(self.plan, pos, share, self.was_on)
            total_kw += float(self.plan.drawn_kw(idx, setpoint=kw).sum())
        return total_kw

    def added_kw(self, leader_kw: dict[int, float]) -> float:
        return self.drawn_kw(leader_kw) - self.base_kw if self.followers else 0.0


def _apply(plan: Plan, kinds: list[_Kind], counts: tuple[int, ...], extra_kw: tuple[float, ...],
           *, value: FloatArray, ceiling_kw: float, was_on: BoolArray) -> float:  # fmt: skip
    """Set the plan to a set found and re-plan its cooling; its $/h, or 0 when the site is over
    the ceiling (the search judged the set with this same cooling, and its own draws never
    below the plan's: the check guards the two from drifting apart)."""
    for kind, k, add_kw in zip(kinds, counts, extra_kw, strict=True):
        plan.hi[kind.devices[k:]] = 0.0
        plan.hi[kind.devices[:k]] = kind.min_kw + (add_kw / k if k else 0.0)
    apply_followers(plan, was_on)
    if plan.total_kw() > ceiling_kw + EPS_KW:
        return 0.0
    idx: Index = np.concatenate([kind.devices for kind in kinds]).astype(np.intp)
    return float((value[idx] * plan.feasible(idx)).sum()) / 1000


def _describe(plan: Plan, idx: Index, now_hi: FloatArray, *, before: Before, rule: Rule,
              text: str) -> None:  # fmt: skip
    """A device the packing changed carries its reason; one back to where it was before the
    shed runs for the reason it had then."""
    changed = idx[np.abs(plan.hi[idx] - now_hi[idx]) > EPS_KW]
    whole = changed[plan.hi[changed] >= before.hi[changed] - EPS_KW]
    cut = changed[plan.hi[changed] < before.hi[changed] - EPS_KW]
    plan.describe(cut, rule, text, only_unbound=False)
    plan.bound[cut] = True
    plan.rule[whole] = before.rule[whole]
    plan.reason_index[whole] = before.reason_index[whole]
    plan.bound[whole] = before.bound[whole]

"""A fleet-level shed split into site obligations, cheapest MWh first, and moved (pure).

Each site offers what its last telemetry says a voluntary program may take, by value: its
`flex_offer`, steps of planned interruptible and flexible load at what that load earns per MWh
(the class's value; cooling counted with the class it cools). Protected and critical load is
never offered. A shed takes the cheapest steps across the fleet first; steps of equal value share
what is left of the shed in proportion to their size, so two alike sites get alike shares. What
the offers cannot cover is the portfolio's shortfall, stated at once.

When a site fails (silent past the deadline, or refusing its share) its share moves to the
others; when it falls short (measured load above its limit past the deadline) the part it
missed moves. Either way the moving kW takes, again cheapest first, what each other site still
offers beyond its own share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from itertools import groupby

__all__ = [
    "Offer", "Split", "allocate", "left_after", "lost_usd_per_h", "reallocate", "site_limit_kw",
    "split",
]  # fmt: skip

EPS_KW = 1e-6
Offer = Sequence[tuple[float, float]]  # (value $/MWh, kW) steps, any order


def allocate(offers: Mapping[str, Offer], shed_kw: float) -> tuple[dict[str, float], float]:
    """(each site's share, the shortfall) of `shed_kw`, the cheapest offered MWh first."""
    steps = sorted((value, site, max(0.0, kw)) for site, offer in offers.items()
                   for value, kw in offer)  # fmt: skip
    shares = dict.fromkeys(offers, 0.0)
    left_kw = shed_kw
    for _, level in groupby(steps, key=lambda step: step[0]):
        at_level = list(level)
        level_kw = sum(kw for _, _, kw in at_level)
        if left_kw <= EPS_KW or level_kw <= EPS_KW:
            continue
        taken = min(1.0, left_kw / level_kw)
        for _, site, kw in at_level:
            shares[site] += kw * taken
        left_kw -= level_kw * taken
    return shares, max(0.0, left_kw)


def _taken(offer: Offer, share_kw: float) -> list[tuple[float, float, float]]:
    """A site's steps, cheapest first, as (value, kW taken by `share_kw`, kW left): a site
    gives its cheapest MWh first, as its own engine sheds."""
    steps, taking_kw = [], share_kw
    for value, kw in sorted(offer):
        used_kw = min(max(0.0, kw), max(0.0, taking_kw))
        taking_kw -= used_kw
        steps.append((value, used_kw, kw - used_kw))
    return steps


def left_after(offer: Offer, share_kw: float) -> list[tuple[float, float]]:
    """What a site still offers once `share_kw` of it is taken."""
    return [(value, left_kw) for value, _, left_kw in _taken(offer, share_kw) if left_kw > EPS_KW]


def site_limit_kw(load_kw: float, share_kw: float, room_kw: float = 0.0) -> float:
    """What a site may draw: its load less its share, plus its share of a ceiling's room."""
    return max(0.0, load_kw - share_kw + room_kw)


def reallocate(
    shares: Mapping[str, float], moving: Mapping[str, float], offers: Mapping[str, Offer],
    failed: Set[str],
) -> tuple[dict[str, float], float]:  # fmt: skip
    """New shares once `moving` kW leave their sites (a failed site's whole share, or the part a
    site falls short by) and go to the sites neither failed nor moving, cheapest first within
    what each offers beyond its share; (shares, the part no site could take)."""
    moving_kw = sum(moving.values())
    takers = {site: left_after(offers.get(site, ()), kw) for site, kw in shares.items()
              if site not in failed and site not in moving}  # fmt: skip
    extra, unplaced_kw = allocate(takers, moving_kw)
    new = {site: kw - moving.get(site, 0.0) + extra.get(site, 0.0) for site, kw in shares.items()}
    return new | dict.fromkeys(failed & shares.keys(), 0.0), unplaced_kw


def lost_usd_per_h(offers: Mapping[str, Offer], shares: Mapping[str, float]) -> float:
    """What the shares cost the portfolio per hour, each share taken from its site's cheapest
    steps."""
    return sum(value * taken_kw / 1000.0 for site, share_kw in shares.items()
               for value, taken_kw, _ in _taken(offers.get(site, ()), share_kw))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Split:
    target_kw: float  # the portfolio's load at most this
    shed_kw: float
    shares_kw: dict[str, float]  # what each site sheds
    room_kw: dict[str, float]  # a ceiling above the load: each site's share of the room left
    limits_kw: dict[str, float]  # what each site may draw: its load less its share, plus room
    shortfall_kw: float  # what the offers could not cover


def split(loads_kw: Mapping[str, float], offers: Mapping[str, Offer], *,
          shed_kw: float | None = None, ceiling_kw: float | None = None) -> Split:  # fmt: skip
    """A shed of `shed_kw`, or a ceiling of `ceiling_kw` on the summed load (the shed it takes
    from the present `loads_kw`), as each site's share and limit. A ceiling above the present
    load gives each site its share of the room left, in proportion to its load."""
    load_kw = sum(loads_kw.values())
    if shed_kw is not None:
        target_kw = load_kw - shed_kw
    elif ceiling_kw is not None:
        target_kw, shed_kw = ceiling_kw, max(0.0, load_kw - ceiling_kw)
    else:
        raise ValueError("a shed or a ceiling")
    shares, shortfall_kw = allocate(offers, shed_kw)
    spare_kw = max(0.0, target_kw - load_kw) if ceiling_kw is not None else 0.0
    room = {site: spare_kw * kw / load_kw if load_kw > 0 else 0.0 for site, kw in loads_kw.items()}
    limits = {site: site_limit_kw(kw, shares[site], room[site]) for site, kw in loads_kw.items()}
    return Split(target_kw, shed_kw, shares, room, limits, shortfall_kw)

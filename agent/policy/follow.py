"""Loads that follow another class (cooling): they draw in proportion to its running share."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["follower_ceilings"]


def follower_ceilings(plan: Plan) -> Iterator[tuple[Index, FloatArray | None, str]]:
    """For each following class: its devices, their ceilings (None: stop) and the reason."""
    fleet = plan.fleet
    for pos, load_class in enumerate(fleet.classes):
        if load_class.follows is None:
            continue
        leader = fleet.members[fleet.class_named(load_class.follows)]
        rated_kw = float(fleet.rated_kw[leader].sum())
        share = float(plan.feasible(leader).sum()) / rated_kw if rated_kw > 0 else 0.0
        idx = fleet.members[pos]
        text = f"follows class {load_class.follows} at {100 * share:.0f}% of its rating"
        if share <= EPS_KW:
            yield idx, None, text
        else:
            # a follower never drops below its own minimum while its leader runs
            yield idx, np.maximum(fleet.rated_kw[idx] * share, fleet.min_kw[idx]), text

"""What the plan learns from measured power: a device's draw when off (idle) and when on.

The configured `idle_kw` and `rated_kw` are a model; the meters are the truth. An open outlet
that reads 15 W, a miner whose control board idles at 40 W, a 3.25 kW outlet that runs at 3.1 kW:
planning on the model would leave the measured site load over a ceiling the plan believes met.
A reading counts once the device has kept its state long enough to have settled
(`SETTLED_AFTER_S`), so a miner still spinning down is not learned as one that idles at 2 kW.
"""

from __future__ import annotations

import numpy as np

from agent.domain.fleet import FleetState, FloatArray
from agent.policy.decision import Memory
from agent.policy.plan import EPS_KW

__all__ = ["SETTLED_AFTER_S", "learned_draws"]

# Longer than any documented settle time of the shipped devices (relays in milliseconds, miner
# fans and hashboards spinning down within about 10-20 s), so a learned draw is a settled one.
SETTLED_AFTER_S = 30.0
# An on/off device is learned at most this far above its rating (inrush and meter noise aside,
# more than that is a device not obeying, which the shell judges).
_ON_DRAW_MAX_RATIO = 1.25
_ON_DRAW_MIN_RATIO = 0.5


def learned_draws(state: FleetState, memory: Memory, now_s: float) -> tuple[FloatArray, FloatArray]:
    """(off draw, on draw) per device: the last settled measurement, nan where none yet."""
    fleet = state.fleet
    n = len(fleet)
    measured = state.measured_kw
    setpoint = memory.setpoint_kw
    seen = state.available & ~np.isnan(measured) & ~np.isnan(setpoint)
    if not seen.any() and memory.off_draw_kw is not None and memory.on_draw_kw is not None:
        return memory.off_draw_kw, memory.on_draw_kw  # nothing new measured (the backtest)
    off = np.full(n, np.nan) if memory.off_draw_kw is None else memory.off_draw_kw.copy()
    on = np.full(n, np.nan) if memory.on_draw_kw is None else memory.on_draw_kw.copy()
    settled = seen & (now_s - memory.changed_at_s >= SETTLED_AFTER_S)
    was_off = settled & (setpoint <= EPS_KW)
    off[was_off] = np.clip(measured[was_off], 0.0, fleet.rated_kw[was_off])
    at_rated = settled & ~fleet.continuous & (np.abs(setpoint - fleet.rated_kw) <= EPS_KW)
    # an on/off device told to run that reads under half its rating is not running (a device
    # just back from a fault, whose last setpoint was only its pinned reading; a relay that
    # did not close): what it draws is not what it draws when on
    at_rated &= measured >= _ON_DRAW_MIN_RATIO * fleet.rated_kw
    on[at_rated] = np.clip(measured[at_rated], 0.0, fleet.rated_kw[at_rated] * _ON_DRAW_MAX_RATIO)
    return off, on

"""Readings are evidence, with a quality: what a device's meter says is believed only when the
rest of what the device says agrees with it.

A device's relays (or run state) and its meter are two witnesses. After the device's settle
window (its meter catching up with a command), the shell sets a reading aside as *suspect*:

  stale          the meter does not answer while the relays do (a mute meter)
  disagrees      the relays are open and the meter reads power (a meter frozen at its on values),
                 or they are closed on a command to run and it reads none (frozen at its off
                 values, or it now sends kW where its profile says W)
  jumped         a meter without relays to check it against fell by a unit factor that no
                 command explains (kW where W is expected)

A suspect device is planned on its worst case: closed relays at its rating, open ones at its
idle draw, no relays at its rating. It is never a reason to shed anything else more than that
worst case, and its own relays are what the plan cuts like any device's where they answer (an
open relay draws nothing, whatever its meter says).

The intended state is enforced: a relay read back in the state it was not told to be in after
it had been seen in it (a PDU that rebooted with its outlets closed, one that re-closes them) has
its command sent again in the next cycle, at most MAX_REWRITES_PER_MIN times a minute; beyond
that it is not obeying (agent.service.devices): planned around, alarmed, and re-sent only on a
doubling backoff. A relay never seen in its commanded state after the settle window (a PDU that
takes writes and ignores them) is not obeying at once.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from agent.domain.fleet import Fleet, FloatArray
from agent.ports import DeviceReading

__all__ = ["MAX_REWRITES_PER_MIN", "Evidence"]

MAX_REWRITES_PER_MIN = 4
# "no power": below 1 % of the rating (a miner idling draws more); a unit slip is a factor of
# 1,000: a fall beyond 200x with no command in between is one
_NO_POWER_FRACTION = 0.01
_UNIT_SLIP = 200.0
_NOISE_KW = 0.05


class Evidence:
    """Per device: its relays' last state, and whether its meter is believed."""

    def __init__(self, fleet: Fleet) -> None:
        n = len(fleet)
        self.fleet = fleet
        self.relay_on: FloatArray = np.full(n, np.nan)  # 1 closed, 0 open, nan: none read
        self.suspect = np.zeros(n, dtype=np.bool_)
        # its relays have read back in the state of its last command since it was sent: one
        # found otherwise later reverted (re-commanded); one never found so ignores writes
        self.confirmed = np.zeros(n, dtype=np.bool_)
        # the site meter reads less than the devices say beyond its tolerance (set each cycle)
        self.site_meter_disowns = False
        self.why: dict[int, str] = {}
        self._rewrites: dict[int, deque[float]] = {}

    def judge(
        self,
        i: int,
        reading: DeviceReading,
        *,
        commanded_kw: float,
        settling: bool,
        last_kw: float,
        commanded_since_last: bool,
    ) -> str | None:
        """Why device i's meter is not believed now (None: it is). `last_kw`: its last reading
        that was believed."""
        if reading.running is not None:
            self.relay_on[i] = 1.0 if reading.running else 0.0
        if reading.power_fault is not None:
            return f"its meter does not answer ({reading.power_fault[:120]})"
        kw = reading.power_kw
        if kw is None or settling:
            return self.why.get(i) if self.suspect[i] else None
        rated = float(self.fleet.rated_kw[i])
        floor_kw = max(_NOISE_KW, 0.05 * rated)
        # relays open and power read: a frozen meter, or a welded relay (or a miner that says OK
        # and keeps hashing). Only the site meter can tell: while it sees the devices
        # over-report, the relays are believed; else the device is drawing against its command
        # (not obeying: agent.service.devices), planned around at what it reads
        if reading.running is False and kw > floor_kw and self.site_meter_disowns:
            return (f"its relays are open and its meter reads {kw:.2f} kW, which the site meter "
                    "does not see")  # fmt: skip
        on_off = not bool(self.fleet.continuous[i])
        no_power = kw < max(0.001, _NO_POWER_FRACTION * rated)
        if reading.running is True and on_off and commanded_kw > 0 and no_power:
            return f"its relays are closed on a run command and its meter reads {kw:.3f} kW"
        # a fall by a unit factor that no command explains: none since, or one that asked for
        # far more than it now reads
        unexplained = not commanded_since_last or (np.isfinite(commanded_kw)
                                                   and kw < commanded_kw / _UNIT_SLIP)  # fmt: skip
        if (reading.running is None and unexplained and np.isfinite(last_kw)
                and last_kw > 0.05 * rated and kw < last_kw / _UNIT_SLIP):  # fmt: skip
            return (f"its reading fell from {last_kw:.2f} to {kw:.4f} kW with no command to "
                    "explain it (kW where W is expected?)")  # fmt: skip
        return None

    def worst_kw(self, idle_kw: FloatArray) -> FloatArray:
        """Each device's worst case: closed relays at its rating, open ones at its idle draw,
        none read at its rating."""
        closed = np.nan_to_num(self.relay_on, nan=1.0) > 0.5
        worst: FloatArray = np.where(closed, self.fleet.rated_kw, idle_kw)
        return worst

    def disagrees(self, i: int, intended_on: bool) -> bool:
        """Whether device i's relays read back against `intended_on`."""
        relay = self.relay_on[i]
        return not np.isnan(relay) and (relay > 0.5) != intended_on

    def reverted(self, i: int, intended_on: bool, now_s: float) -> bool | None:
        """Whether device i's relays read back in the state it was not told to be in: None when
        they agree (or were not read), True when its command is due again, False when it has
        been re-sent MAX_REWRITES_PER_MIN times in the last minute already."""
        if not self.disagrees(i, intended_on):
            return None
        done = self._rewrites.setdefault(i, deque())
        while done and now_s - done[0] > 60.0:
            done.popleft()
        if len(done) >= MAX_REWRITES_PER_MIN:
            return False
        done.append(now_s)
        return True

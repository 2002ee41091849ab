"""How the VEN follows the events it is sent: each becomes an Obligation for the site (opted
in), or is opted out with the reason; modifications replace it, cancellations and withdrawals
release it, and multi-interval events step under one obligation id (openadr_events.py).

A mixin of OpenAdrVen (openadr_ven.py keeps the session with the VTN: registration, polling,
reports); the state it uses is set up there.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from openleadr import OpenADRClient

from adapters.signals.openadr_events import (
    SOURCE,
    EventPlan,
    SiteNow,
    UnsupportedEventError,
    check_feasible,
    not_for_site,
    obligation_at,
    plan_event,
    price_signals,
    startafter_s,
)
from adapters.signals.openadr_priority import active_window, govern
from agent.config import OpenAdrConfig
from agent.domain.signals import Obligation, ObligationCancel, PriceSignal
from agent.ports import SignalSink, SiteView

__all__ = ["EventFollowing", "OptDecision"]

log = logging.getLogger("adapters.signals.openadr_ven")


@dataclass(frozen=True, slots=True)
class OptDecision:
    """What the VEN answered to one version of an event, and why."""

    event_id: str
    modification_number: int
    opt_type: str  # optIn | optOut
    reason: str
    decided_at_utc: datetime


class EventFollowing:
    """The event half of the VEN (see the module doc)."""

    _config: OpenAdrConfig
    _site: SiteView
    _rng: random.Random | None
    _committed: dict[str, int]
    _on_decision: Callable[[OptDecision], None] | None
    _sink: SignalSink | None
    _client: OpenADRClient | None
    _plans: dict[str, EventPlan]
    _held: dict[str, Obligation]
    _timers: dict[str, asyncio.Task[None]]
    _offsets_s: dict[str, float]
    _accepted_at_kw: dict[str, float]
    _background: set[asyncio.Task[Any]]
    decisions: dict[str, OptDecision]
    released: dict[str, str]
    notes: dict[str, str]

    @property
    def ven_id(self) -> str | None:
        return None if self._client is None else self._client.ven_id

    def _after_parse(
        self,
        message_type: str,
        payload: Mapping[str, Any],
        also_listed: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """An oadrDistributeEvent lists every pending and active event of this VEN (OpenADR
        2.0b): an event we hold that is no longer listed was withdrawn. `also_listed`: events
        the distribution named in a version that was rejected (openadr_salvage.py)."""
        if message_type != "oadrDistributeEvent":
            return
        events = payload.get("events") or []
        listed = {str(e["event_descriptor"]["event_id"]) for e in events} | set(also_listed)
        for event_id in [e for e in self._plans if e not in listed]:
            self._withdraw(event_id, "no longer listed by the VTN")
        for event_id in [e for e in self._committed if e not in listed]:
            # committed before a restart, and ended or withdrawn while the agent was down
            self._withdraw(event_id, "no longer listed by the VTN")

    async def _on_event(self, event: Mapping[str, Any]) -> str:
        descriptor = event["event_descriptor"]
        event_id = str(descriptor["event_id"])
        modification = int(descriptor.get("modification_number") or 0)
        screened = self._screen(event, event_id, modification)
        if screened is not None:
            return screened
        prices: list[PriceSignal] = []
        try:
            if self._config.price_signals:
                prices = price_signals(event, datetime.now(UTC))
            for price in prices:  # the engine prices each interval when it comes
                self._push(price)
            if event_id not in self._offsets_s:
                rng = self._rng or random.Random(f"{self._config.ven_name}/{event_id}")
                self._offsets_s[event_id] = rng.uniform(0.0, startafter_s(event))
            load_kw = self._accepted_at_kw.get(event_id, self._site.site_kw())
            site = SiteNow(load_kw=load_kw, capacity_kw=self._site.capacity_kw())
            plan = plan_event(event, self._config, self._floor_kw, self._offsets_s[event_id], site)
        except UnsupportedEventError as exc:
            if prices:  # a price event asks nothing more of the site
                values = [p.price_usd_per_mwh for p in prices]
                why = f"{len(prices)} price(s), {min(values):.2f} to {max(values):.2f} $/MWh"
                return self._decide(event_id, modification, "optIn", why)
            return self._opt_out(event_id, modification, str(exc), "notParticipating")
        return self._take(plan)

    def _screen(self, event: Mapping[str, Any], event_id: str, modification: int) -> str | None:
        """The answer to an event that is not followed: cancelled, completed, not this site's,
        a test; None for one to plan."""
        descriptor = event["event_descriptor"]
        status = descriptor.get("event_status")
        if status == "cancelled":
            self._withdraw(event_id, "cancelled by the VTN")
            return self._decide(event_id, modification, "optIn", "cancellation acknowledged")
        if status == "completed":
            self._committed.pop(event_id, None)
            self._forget(event_id)
            return self._decide(event_id, modification, "optIn", "completed")
        why_not = not_for_site(event, self.ven_id, self._config)
        if why_not is not None:  # another VEN's, resource's, group's or program's: never applied
            return self._opt_out(event_id, modification, f"not for this site: {why_not}",
                                 "notParticipating")  # fmt: skip
        if descriptor.get("test_event") in (True, "true"):
            return self._decide(event_id, modification, "optIn", "test event: no action")
        return None

    def _take(self, plan: EventPlan) -> str:
        """Opt in to a planned event (or out, when the site cannot meet it) and follow it."""
        event_id, modification = plan.event_id, plan.modification_number
        if self._committed.pop(event_id, None) == modification:
            # the site accepted this very version before a restart and is shedding for it now:
            # judged against today's (already reduced) load it could look infeasible
            reason: str | None = "resumed after a restart"
        else:
            load_kw = self._accepted_at_kw.get(event_id, self._site.site_kw())
            reason = check_feasible(plan, load_kw, self._floor_kw)
            if reason is not None and self._config.opt_out_when_infeasible:
                return self._opt_out(event_id, modification, reason, "mustRun")
            self._accepted_at_kw.setdefault(event_id, load_kw)
        self._plans[event_id] = plan
        self._follow(event_id)
        self._refollow(plan.program, but=event_id)
        return self._decide(event_id, modification, "optIn", reason or f"{plan.signal} accepted")

    def _floor_kw(self, include_protected: bool) -> float:
        return self._site.floor_kw(include_protected=include_protected)

    def _opt_out(self, event_id: str, modification: int, reason: str, opt_reason: str) -> str:
        self._withdraw(event_id, f"opted out: {reason}")
        log.warning(
            "opting out of OpenADR event %s (modification %d): %s", event_id, modification, reason
        )
        client = self._client
        if client is not None:
            # The reason travels as an oadrCreateOpt (EiOpt) after the oadrCreatedEvent; a VTN
            # without an EiOpt service answers 404 and the optOut itself still stands.
            self._spawn(
                client.create_opt(
                    opt_type="optOut",
                    opt_reason=opt_reason,
                    targets=[{"ven_id": client.ven_id}],
                    event_id=event_id,
                    modification_number=modification,
                )
            )
        return self._decide(event_id, modification, "optOut", reason)

    def _decide(self, event_id: str, modification: int, opt_type: str, reason: str) -> str:
        now = datetime.now(UTC)
        decision = OptDecision(event_id, modification, opt_type, reason, now)
        self.decisions[event_id] = decision
        if self._on_decision is not None:
            self._on_decision(decision)
        return opt_type

    def _follow(self, event_id: str) -> None:
        """Push the event's obligation as it stands now, and wake at its next step."""
        timer = self._timers.pop(event_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        plan = self._plans.get(event_id)
        if plan is None:
            return
        now = datetime.now(UTC)
        obligation, wake = obligation_at(plan, now)
        _, window_end = active_window(plan)
        if obligation is None and window_end is not None and window_end <= now:
            self._release(event_id, now)
            self._forget(event_id)
            return
        if obligation is None:  # no restriction left, yet it governs lower events to its end
            wake = window_end
        else:
            governed = govern(plan, obligation, wake, self._plans.values(), now)
            obligation, wake = governed.obligation, governed.wake_utc
            if governed.by_event_id is None:
                self.notes.pop(event_id, None)
            else:
                self.notes[event_id] = (f"suspended while higher-priority event "
                                        f"{governed.by_event_id} is active")  # fmt: skip
        if obligation is None:
            if event_id in self._held:
                self.released[event_id] = self.notes.get(event_id, "no restriction left")
            self._release(event_id, now)
        elif self._held.get(event_id) != obligation:
            self._held[event_id] = obligation
            self._push(obligation)
        if wake is not None:
            self._timers[event_id] = asyncio.get_running_loop().create_task(
                self._wake(event_id, wake)
            )

    def _refollow(self, program: str, but: str) -> None:
        """Look again at the other events of a program: one of them changed, and with it which
        event governs where they overlap (openadr_priority.py)."""
        for event_id in [e for e, p in self._plans.items() if p.program == program and e != but]:
            self._follow(event_id)

    async def _wake(self, event_id: str, at_utc: datetime) -> None:
        await asyncio.sleep(max(0.0, (at_utc - datetime.now(UTC)).total_seconds()))
        self._follow(event_id)

    def _withdraw(self, event_id: str, why: str) -> None:
        now = datetime.now(UTC)
        plan = self._plans.get(event_id)
        committed = self._committed.pop(event_id, None) is not None
        if event_id in self._held or committed:
            log.info("OpenADR event %s released: %s", event_id, why)
            self.released[event_id] = why  # read by whoever the push below reaches
        if committed and event_id not in self._held:
            self._push(ObligationCancel(event_id=event_id, at_utc=now, source=SOURCE))
        self._release(event_id, now)
        self._forget(event_id)
        if plan is not None:
            self._refollow(plan.program, but=event_id)

    def _release(self, event_id: str, now: datetime) -> None:
        held = self._held.pop(event_id, None)
        if held is not None and (held.end_utc is None or held.end_utc > now):
            self._push(ObligationCancel(event_id=event_id, at_utc=now, source=SOURCE))

    def _forget(self, event_id: str) -> None:
        self._plans.pop(event_id, None)
        self.notes.pop(event_id, None)
        self._accepted_at_kw.pop(event_id, None)
        timer = self._timers.pop(event_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    def _push(self, value: Obligation | ObligationCancel | PriceSignal) -> None:
        assert self._sink is not None
        self._sink(value)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

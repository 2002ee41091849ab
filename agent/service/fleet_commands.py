"""A command from the fleet's hub, and the checks it passes before its dispatch is taken.

A fleet command wraps a dispatch message (as `<prefix>/dispatch` takes it) in an envelope the
hub signs: the site it is for, the issuer's key id, a sequence number per key, when it was
issued and when it expires. The site refuses one (a rejected ack says why) that is:

  unsigned or badly signed   HMAC-SHA256 under the fleet key named by key_id, over
                             "<site id>:fleet", a newline and the envelope without `signature`
                             (agent.domain.signing: the form every signed message uses)
  for another site           site_id is not this site's
  expired                    expires_at is past when the cycle takes it: a command held up by a
                             cut link never applies late, however long the cut lasted
  replayed or out of order   seq not above the last one taken from that key (kept in the store
                             in the transaction that took the command: a restart keeps it)

then its dispatch goes through the site's own checks (schema, dates, its issued_at within the
replay window, duplicates), authenticated by the envelope. `take` runs inside the cycle.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from agent.domain.signing import sign, signature_ok
from agent.service.checks import IntakeLimits, MessageChecks, RejectedError, safe_text
from agent.service.messages import DispatchAck
from agent.service.store import Store

__all__ = ["FleetCommand", "FleetCommands", "fleet_scope", "signed_command"]

_STATE_KEY = "fleet_seq"


def fleet_scope(site_id: str) -> str:
    return f"{site_id}:fleet"


def signed_command(site_id: str, seq: int, key_id: str, key: bytes, *, issued_at: datetime,
                   expires_at: datetime, dispatch: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """A fleet command as the hub sends it, signed for `site_id`."""
    body: dict[str, Any] = {"site_id": site_id, "seq": seq, "key_id": key_id,
                            "issued_at": issued_at.isoformat(),
                            "expires_at": expires_at.isoformat(), "dispatch": dispatch}  # fmt: skip
    body["signature"] = sign(body, key, fleet_scope(site_id))
    return body


class FleetCommand(BaseModel):
    """What the hub publishes on `<prefix>.cmd.<site>`."""

    model_config = ConfigDict(extra="forbid")

    site_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=1, strict=True)
    key_id: str = Field(min_length=1, max_length=64)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    dispatch: dict[str, Any] = Field(description="a dispatch message, unsigned")
    signature: str = Field(pattern=r"^[0-9a-f]{64}$")


class FleetCommands:
    """Judges fleet commands and hands their dispatch to the site's intake."""

    def __init__(self, site_id: str, keys: Mapping[str, bytes], store: Store, *,
                 dispatch: Callable[[bytes, str, str], str],
                 ack: Callable[[DispatchAck], None], limits: IntakeLimits | None = None,
                 ) -> None:  # fmt: skip
        self._site_id = site_id
        self._keys = dict(keys)
        self._store = store
        self._dispatch = dispatch  # Intake.dispatch(payload, source, authenticated)
        self._ack = ack
        self._decode = MessageChecks(None, limits or IntakeLimits(), {}, site_id).decode
        stored = store.load_state(_STATE_KEY)
        self._last_seq: dict[str, int] = (
            {str(k): int(v) for k, v in stored.items()} if isinstance(stored, dict) else {}
        )

    def take(self, payload: bytes, now: datetime) -> str:
        """One command, in the cycle: the dispatch's outcome, or "rejected"."""
        raw: Any = None
        try:
            raw = self._decode(payload)
            command = self._check(raw, now)
        except RejectedError as exc:
            inner = raw.get("dispatch") if isinstance(raw, dict) else None
            event_id = inner.get("event_id") if isinstance(inner, dict) else None
            self._ack(DispatchAck(
                event_id=safe_text(event_id) if isinstance(event_id, str) else "",
                status="rejected", reason=f"fleet command refused: {exc}", requested_kw=None,
                achieved_kw=None, at=now,
            ))  # fmt: skip
            self._store.audit(now, "fleet-command-rejected", safe_text(event_id or "?"),
                              {"reason": str(exc)}, "fleet")  # fmt: skip
            return "rejected"
        self._last_seq[command.key_id] = command.seq
        self._store.save_state(_STATE_KEY, self._last_seq)
        body = json.dumps(command.dispatch).encode()
        return self._dispatch(body, "fleet", f"fleet/{command.key_id}")

    def _check(self, raw: Any, now: datetime) -> FleetCommand:
        if not isinstance(raw, dict):
            raise RejectedError("not a JSON object")
        key_id = raw.get("key_id")
        key = self._keys.get(key_id) if isinstance(key_id, str) else None
        if key is None:
            raise RejectedError(f"unknown key_id {safe_text(key_id, 40)}")
        if not signature_ok(raw, key, fleet_scope(self._site_id)):
            raise RejectedError(f"bad signature (for {fleet_scope(self._site_id)})")
        try:
            command = FleetCommand.model_validate(raw)
        except ValueError as exc:
            raise RejectedError(f"not a fleet command: {safe_text(str(exc), 200)}") from None
        if command.site_id != self._site_id:
            raise RejectedError(f"for site {safe_text(command.site_id, 40)}, not this one")
        if command.expires_at <= now:
            raise RejectedError(f"expired at {command.expires_at.isoformat()}; not applied")
        last = self._last_seq.get(command.key_id, 0)
        if command.seq <= last:
            raise RejectedError(f"replayed or out of order: seq {command.seq} from "
                                f"{command.key_id} after {last}; not applied")  # fmt: skip
        return command

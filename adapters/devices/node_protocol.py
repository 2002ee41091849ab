"""What the service and an MQTT device say to each other, and how each side trusts it.

Topics: a GPU server running `gridflex node` lives under the site's prefix,
`<prefix>/node/<node id>/setpoint` and `.../state`, so one broker ACL on `<prefix>/#` covers it.

Signing (when the device's driver has an `hmac_key`, and `gridflex node` the same key): every
setpoint and every state carries `issued_at`, a `message_id` and an HMAC-SHA256 `signature`
(agent.domain.signing). A receiver takes a message only if the signature is good, it was issued
within `window_s` of its own clock (at most `skew_s` ahead), and it is newer than the last one it
took from that peer, so a captured message replayed later is never newer and is dropped. Without
a key the wire format is the plain JSON of round one, and the broker's ACL is the only guard.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, ValidationError

from agent.domain.signing import sign, signature_ok

__all__ = ["Freshness", "Setpoint", "node_topics", "parse_setpoint", "stamp"]


def node_topics(prefix: str, node_id: str) -> tuple[str, str]:
    """(setpoint topic, state topic) of a GPU server running `gridflex node`."""
    return f"{prefix}/node/{node_id}/setpoint", f"{prefix}/node/{node_id}/state"


class Setpoint(BaseModel):
    """A setpoint as `gridflex node` accepts it: `"on": "false"` is not a bool, NaN no kW."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    on: StrictBool
    kw: float = Field(ge=0, le=1_000_000)
    percent: float | None = Field(default=None, ge=0, le=100)
    issued_at: AwareDatetime | None = None
    message_id: str | None = Field(default=None, max_length=64)
    signature: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


def parse_setpoint(payload: bytes) -> tuple[Setpoint, dict[str, Any]]:
    """The setpoint and its raw JSON; ValueError with the reason when it is not one."""
    try:
        raw = json.loads(payload, parse_constant=_no_constant)
        return Setpoint.model_validate(raw), raw
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "setpoint"
        raise ValueError(f"{where}: {first['msg']}") from None
    except (RecursionError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {type(exc).__name__}") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def stamp(body: dict[str, Any], key: bytes | None, now: datetime, topic: str) -> bytes:
    """The message as sent on `topic`: signed for that topic, dated and numbered when there is a
    key."""
    if key is not None:
        body = {**body, "issued_at": now.isoformat(), "message_id": uuid.uuid4().hex}
        body["signature"] = sign(body, key, topic)
    return json.dumps(body).encode()


class Freshness:
    """Judges the signed messages of one peer (see the module docstring)."""

    def __init__(
        self, key: bytes, topic: str, *, window_s: float = 30.0, skew_s: float = 5.0
    ) -> None:
        self._key = key
        self._topic = topic  # what the signature must name: a copy from another topic fails
        self._window_s = window_s
        self._skew_s = skew_s
        self._last: datetime | None = None

    def refuse(self, raw: dict[str, Any], now: datetime) -> str | None:
        """Why the message cannot be taken, or None (and it becomes the newest taken)."""
        if not signature_ok(raw, self._key, self._topic):
            return "unsigned, or a bad signature for this topic"
        try:
            issued = datetime.fromisoformat(str(raw.get("issued_at")))
            age_s = (now - issued).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return "no usable issued_at"
        if not math.isfinite(age_s) or age_s > self._window_s or -age_s > self._skew_s:
            return f"issued {age_s:.0f} s from now, outside the {self._window_s:.0f} s window"
        if self._last is not None and issued <= self._last:
            return "not newer than the last message taken: a replay"
        self._last = issued
        return None

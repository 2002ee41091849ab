"""The checks every inbound message passes before it can change anything, in order:

  size       at most `max_message_bytes` (default 64 KiB), before any parsing
  JSON       UTF-8, no NaN/Infinity, integers of at most 30 digits, nesting at most
             `max_depth`, no lone surrogates or NUL in any string
  signature  HMAC-SHA256 under the site key or the key named by `key_id` (when keys are set)
  schema     the topic's pydantic model (agent.service.messages)
  dates      every time within `date_range_days` of the site clock (a year 9999 is a typo or an
             attack, and cannot even be converted to UTC)
  fresh      issued_at within the replay window, and at most `clock_skew_s` ahead
  replay     a signed message's `message_id` is applied once (agent.service.replay)

Each raises RejectedError with the reason the "rejected" ack carries. `safe_text` is how any
sender-chosen text is written to logs and the audit: escaped, truncated.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.domain.signing import sign

__all__ = ["IntakeLimits", "MessageChecks", "RejectedError", "safe_text", "sign"]

MAX_INT_DIGITS = 30


@dataclass(frozen=True, slots=True)
class IntakeLimits:
    replay_window_s: float = 300.0  # issued_at older than this: a replay or a stuck queue
    clock_skew_s: float = 5.0  # issued_at later than now by more than this: a wrong clock
    horizon_s: float = 7 * 86_400.0  # events scheduled further ahead are refused
    max_message_bytes: int = 64 * 1024
    max_depth: int = 16  # our messages nest two levels; JSON bombs nest thousands
    date_range_days: float = 366.0


class RejectedError(Exception):
    """A message that cannot be taken; its text is the reason the "rejected" ack carries."""


def safe_text(value: object, limit: int = 128) -> str:
    """Sender-chosen text as logs and the audit show it: control characters, newlines and lone
    surrogates escaped (no forged log lines), at most `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    escaped = json.dumps(text[: limit + 1])[1:-1]  # ASCII: \n, \u0000, \ud800 ...
    return escaped if len(escaped) <= limit else f"{escaped[:limit]}...({len(text)} chars)"


Model = TypeVar("Model", bound=BaseModel)


def _schema_reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        where = ".".join(safe_text(p, 40) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "schema: " + "; ".join(parts)


def _no_constant(name: str) -> None:
    raise RejectedError(f"bad JSON: {name} is not a number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RejectedError(f"bad JSON: an integer of {len(text)} digits")
    return int(text)


def _check_tree(value: Any, max_depth: int) -> None:
    """Depth and strings of a parsed message, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or any("\ud800" <= c <= "\udfff" for c in item):
                raise RejectedError("bad JSON: a string holds NUL or a lone surrogate")
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > max_depth:
            raise RejectedError(f"bad JSON: nested deeper than {max_depth} levels")
        children = list(item.keys()) + list(item.values()) if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)


@dataclass(frozen=True, slots=True)
class MessageChecks:
    """Shared by dispatch, overrides and grid conditions (agent.service.grid), so one set of keys
    and one replay window govern every topic.

    `secret` is the site key; `keys` more keys by id (one per sender: QSE, SCADA, engineers),
    named in a message by `key_id`. With any key set, every message must be signed.
    """

    secret: bytes | None = None
    limits: IntakeLimits = IntakeLimits()
    keys: Mapping[str, bytes] = field(default_factory=dict)
    site_id: str = ""  # with the topic, what a signature covers (agent.domain.signing)

    @property
    def signed(self) -> bool:
        return self.secret is not None or bool(self.keys)

    def decode(self, payload: bytes) -> Any:
        if len(payload) > self.limits.max_message_bytes:
            raise RejectedError(
                f"too large: {len(payload)} bytes, the limit is {self.limits.max_message_bytes}"
            )
        try:
            raw = json.loads(
                payload.decode("utf-8"), parse_constant=_no_constant, parse_int=_bounded_int
            )
        except RecursionError:
            depth = self.limits.max_depth
            raise RejectedError(f"bad JSON: nested deeper than {depth} levels") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise RejectedError(f"bad JSON: {safe_text(exc, 200)}") from None
        _check_tree(raw, self.limits.max_depth)
        return raw

    def signature(self, raw: Any, topic: str) -> str | None:
        """The id of the key that signed the message for this site and `topic` ("site" for the
        site key); None when the site signs nothing."""
        if not self.signed:
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("signature"), str):
            raise RejectedError("unsigned: this site requires an HMAC-SHA256 signature")
        key_id = raw.get("key_id")
        if key_id is None:
            if self.secret is None:
                raise RejectedError("unsigned: key_id missing (this site has one key per sender)")
            key, name = self.secret, "site"
        elif isinstance(key_id, str) and key_id in self.keys:
            key, name = self.keys[key_id], key_id
        else:
            raise RejectedError(f"bad signature: unknown key_id {safe_text(key_id, 40)}")
        try:
            expected = sign(raw, key, f"{self.site_id}:{topic}")
        except (TypeError, ValueError):
            raise RejectedError("bad signature: message cannot be canonicalized") from None
        if not hmac.compare_digest(expected, raw["signature"]):
            raise RejectedError(f"bad signature (for {self.site_id}:{topic})")
        if not isinstance(raw.get("message_id"), str):
            raise RejectedError("unsigned: a signed message needs a unique message_id")
        return name

    @staticmethod
    def schema(model: type[Model], raw: Any) -> Model:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise RejectedError(_schema_reason(exc)) from None
        except (OverflowError, RecursionError, ValueError) as exc:  # validators' own arithmetic
            raise RejectedError(f"schema: {safe_text(exc, 200)}") from None

    def dates(self, message: BaseModel, now: datetime) -> None:
        span = timedelta(days=self.limits.date_range_days)
        for name in type(message).model_fields:
            value = getattr(message, name)
            if not isinstance(value, datetime):
                continue
            try:
                inside = abs(value - now) <= span
            except OverflowError:
                inside = False
            if not inside:
                raise RejectedError(
                    f"{name} out of range: more than {self.limits.date_range_days:.0f} days "
                    "from the site clock"
                )

    def fresh(self, issued_at: datetime, now: datetime) -> None:
        age_s = (now - issued_at).total_seconds()
        if age_s > self.limits.replay_window_s:
            raise RejectedError(
                f"stale: issued {age_s:.0f} s ago, outside the "
                f"{self.limits.replay_window_s:.0f} s replay window"
            )
        if -age_s > self.limits.clock_skew_s:
            raise RejectedError(
                f"issued_at {issued_at.isoformat()} is {-age_s:.0f} s in the future "
                f"(more than the {self.limits.clock_skew_s:.0f} s clock skew allowed)"
            )

    def message(
        self,
        model: type[Model],
        raw: Any,
        now: datetime,
        authenticated: str | None = None,
        *,
        topic: str,
    ) -> tuple[Model, str | None]:
        """A decoded message through signature, schema, dates and freshness, in that order: the
        message and the id of the key that signed it (None when the site signs nothing).

        `authenticated` names a sender its transport has already authenticated (Sparkplug
        commands, allowed by the broker's ACL: the protocol has no signature); the signature
        step is skipped for it, every other check stays."""
        key = self.signature(raw, topic) if authenticated is None else authenticated
        message = self.schema(model, raw)
        self.dates(message, now)
        issued_at = getattr(message, "issued_at", None)
        if isinstance(issued_at, datetime):
            self.fresh(issued_at, now)
        return message, key

"""HMAC-SHA256 over a JSON message: the one canonical form every signed gridflex message uses
(inbound dispatch, overrides and grid conditions; setpoints to and states from devices).

The signature covers the message without its `signature` field, serialised with keys sorted,
compact separators and UTF-8 (Python: `json.dumps(body, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`), so any sender can reproduce it in a few lines.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

__all__ = ["sign", "signature_ok"]


def sign(message: dict[str, Any], key: bytes) -> str:
    """The lower-case hex HMAC-SHA256 of the message without `signature`."""
    body = {k: v for k, v in message.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signature_ok(message: dict[str, Any], key: bytes) -> bool:
    """Whether `message["signature"]` is ours under `key` (False when absent or malformed)."""
    given = message.get("signature")
    if not isinstance(given, str):
        return False
    try:
        return hmac.compare_digest(sign(message, key), given)
    except (TypeError, ValueError):  # not serialisable: not signed by anyone
        return False

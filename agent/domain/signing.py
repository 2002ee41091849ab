"""HMAC-SHA256 over a JSON message and where it is sent: the one canonical form every signed
gridflex message uses (inbound dispatch, overrides and grid conditions; setpoints to and states
from devices).

The signature covers the message's scope, a newline, then the message without its `signature`
field serialised with keys sorted, compact separators and UTF-8 (Python:
`scope + "\n" + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`),
so any sender can reproduce it in a few lines. The scope names where the message is meant to
act: `<site id>:<topic suffix>` for the site's inbound topics (`west-50mw:dispatch`), the full
topic for a node's setpoints and states (`gridflex/west-50mw/node/gpu-1/state`). A message signed
for one site, topic or node fails on another: a QSE's limit for site A replayed to site B under
the same key, or gpu-1's state replayed on gpu-2's topic, is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

__all__ = ["sign", "signature_ok"]


def sign(message: dict[str, Any], key: bytes, scope: str) -> str:
    """The lower-case hex HMAC-SHA256 of `scope`, a newline and the message without
    `signature`."""
    body = {k: v for k, v in message.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, f"{scope}\n{text}".encode(), hashlib.sha256).hexdigest()


def signature_ok(message: dict[str, Any], key: bytes, scope: str) -> bool:
    """Whether `message["signature"]` is ours under `key` for `scope` (False when absent or
    malformed)."""
    given = message.get("signature")
    if not isinstance(given, str):
        return False
    try:
        return hmac.compare_digest(sign(message, key, scope), given)
    except (TypeError, ValueError):  # not serialisable: not signed by anyone
        return False

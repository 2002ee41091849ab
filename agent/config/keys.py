"""HMAC keys in the site file: named keys, each long enough to be a key."""

from __future__ import annotations

import re

from pydantic import SecretStr

__all__ = ["MIN_KEY_BYTES", "checked_keys"]

MIN_KEY_BYTES = 32  # HMAC-SHA256 keys: shorter ones can be guessed, an empty one is no key


def checked_keys(value: dict[str, SecretStr]) -> dict[str, SecretStr]:
    """`value` when every key id is a plain name and every key at least MIN_KEY_BYTES long."""
    for key_id, key in value.items():
        if not re.fullmatch(r"[A-Za-z0-9_.:@/-]{1,64}", key_id):
            raise ValueError(f"key id {key_id!r}: letters, digits and _.:@/- only")
        if len(key.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"key {key_id}: must be at least {MIN_KEY_BYTES} bytes")
    return value

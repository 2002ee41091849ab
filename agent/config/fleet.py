"""The `fleet` section of the site file: the site as one leaf of a fleet on NATS JetStream
(docs/fleet.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from agent.config.keys import checked_keys

__all__ = ["FleetConfig"]
_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # a JetStream domain and a subject token alike


class FleetConfig(BaseModel):
    """The site's own NATS server (its leaf node, with JetStream in the site's domain) and what
    the hub may command it with. What the site publishes goes into a stream on that server, so it
    is kept while the link to the hub is cut; the site reads the hub's commands across the link
    with its own durable consumer in the hub's domain (they wait there while the link is cut)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    url: str = Field(default="nats://127.0.0.1:4222", pattern=r"^(nats|tls)://[^\s]+$")
    """the site's leaf node (a local nats-server with JetStream; docs/fleet.md has its file)"""
    domain: str | None = Field(default=None, pattern=_NAME)
    """the site's JetStream domain, as its nats-server sets it; null: the site id"""
    hub_domain: str = Field(default="hub", pattern=_NAME)
    """the hub's JetStream domain"""
    subject_prefix: str = Field(default="gridflex", pattern=_NAME)
    """the first token of every fleet subject"""
    user: str | None = None
    """the leaf node's user name"""
    password: SecretStr | None = None
    """its password: write ${GRIDFLEX_NATS_PASSWORD}"""
    creds_file: Path | None = None
    """a NATS credentials file (JWT and seed) instead of a user and password"""
    ca_file: Path | None = None
    """the CA of the leaf node's certificate, for a tls:// url"""
    command_keys: dict[str, SecretStr] = Field(min_length=1)
    """who may command the site through the fleet: one HMAC key (32+ bytes) per key id"""
    out_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    """what the site's outgoing stream keeps at most while the hub cannot take it; the oldest
    telemetry goes first beyond it"""

    @field_validator("command_keys")
    @classmethod
    def _keys_long_enough(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return checked_keys(value)

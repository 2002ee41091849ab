"""The `sparkplug` section of the site file: gridflex as a Sparkplug B 3.0 edge node."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SparkplugConfig"]

# Sparkplug ids are UTF-8 without the MQTT separators and wildcards (+, /, #)
_SPARKPLUG_ID = r"^[^+/#\s]+$"


class SparkplugConfig(BaseModel):
    """Sparkplug B beside the JSON interface, on the `mqtt` section's broker, TLS and
    credentials (docs/sparkplug.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    group_id: str = Field(min_length=1, max_length=64, pattern=_SPARKPLUG_ID)
    """the Sparkplug group the site's edge node belongs to"""
    edge_node_id: str | None = Field(default=None, max_length=64, pattern=_SPARKPLUG_ID)
    """the edge node's id; null: the site id"""
    primary_host_id: str | None = Field(default=None, max_length=64, pattern=_SPARKPLUG_ID)
    """the primary host's id (Ignition's MQTT Engine: its Primary Host ID): the node is born
    only while spBv1.0/STATE/<id> says online; null: born at once"""
    report_every_s: float = Field(default=1.0, ge=0.1, le=60)
    """how often changed metrics are looked for (reported by exception, with deadbands)"""
    accept_commands: bool = False
    """take NCMD/DCMD writes for dispatch, release, overrides and the grid emergency level
    (authenticated by the broker's ACL: Sparkplug has no signature); Node Control/Rebirth is
    always honoured"""
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """the edge node's own MQTT client id; null: the service's client id + `-spb`"""

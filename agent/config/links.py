"""The site file's links and service: where prices come from, the MQTT broker (with its keys
and limits), the service's own settings, and the site's revenue meter."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from agent.config.drivers import Host, ModbusDriverConfig
from agent.config.keys import MIN_KEY_BYTES, checked_keys
from agent.config.strict import Strict

__all__ = ["MqttConfig", "PricesConfig", "ServiceConfig", "SiteMeterConfig", "TlsConfig"]


class PricesConfig(Strict):
    """Where live prices come from."""

    source: Literal["ercot-api", "ercot-mis", "replay", "none"] = "ercot-mis"
    """ERCOT's Public API, its MIS reports, a replayed price file, or no prices"""
    market: Literal["rt15", "sced5", "dam"] = "rt15"
    """real-time 15-minute SPP, 5-minute SCED LMP, or day-ahead hourly"""
    replay_path: Path | None = None
    """the price file `source: replay` plays (see docs/prices.md)"""
    replay_speedup: float = Field(default=1.0, gt=0, le=1e6)
    """replay this many times faster than real time"""
    poll_interval_s: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="while the next expected price is not yet published, ask again this often",
    )
    base_url: str | None = None
    """the API's address (default: ERCOT's own)"""
    auth_url: str | None = None
    """the token endpoint of the ERCOT Public API (default: ERCOT's own)"""


class TlsConfig(Strict):
    ca_file: Path
    """the CA that signed the broker's certificate"""
    cert_file: Path | None = None
    """the client certificate, for brokers that ask for one"""
    key_file: Path | None = None
    """the client certificate's key"""


class MqttConfig(Strict):
    host: Host = "127.0.0.1"
    """the broker's address"""
    port: int = Field(default=1883, ge=1, le=65535)
    """the broker's port (8883 is usual with TLS)"""
    client_id: str | None = None
    """default gridflex-<site id>; the persistent session is kept under it"""
    username: str | None = None
    """the broker's user name"""
    password: SecretStr | None = None
    """the broker's password: write ${GRIDFLEX_MQTT_PASSWORD}"""
    tls: TlsConfig | None = None
    """TLS to the broker; null: plain TCP (loopback or a closed network only)"""
    topic_prefix: str | None = Field(default=None, description="default gridflex/<site id>")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    """MQTT keep-alive; the broker publishes the last will after 1.5x this"""
    hmac_secret: SecretStr | None = Field(
        default=None, description="the site key: signed messages without key_id (32+ bytes)"
    )
    hmac_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="one key per sender (QSE, SCADA, engineers), named by key_id (32+ bytes)",
    )
    replay_window_s: float = Field(default=300, gt=0, le=86_400)
    """a signed message's issued_at may be this old; its nonce is remembered this long"""
    clock_skew_s: float = Field(default=5, ge=0, le=120)
    """how far ahead a sender's clock may be"""
    max_message_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """larger inbound messages are rejected before parsing"""
    max_messages_per_s: float = Field(default=20, gt=0, description="per inbound topic")
    max_burst: int = Field(default=200, ge=1, description="messages beyond the rate at once")

    @field_validator("hmac_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_KEY_BYTES} bytes (an empty or short key "
                             "lets anyone sign)")  # fmt: skip
        return value

    @field_validator("hmac_keys")
    @classmethod
    def _keys_long_enough(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return checked_keys(value)


class ServiceConfig(Strict):
    mode: Literal["control", "shadow"] = "control"
    """control: gridflex commands the devices; shadow: it reads every device and signal and
    decides, but writes to no device: acks say shadow, and `gridflex shadow-report` compares
    what it would have done with what the site did. A change is a restart, logged"""
    cycle_s: float = Field(default=2.0, gt=0, le=60)
    """one decision per this many seconds"""
    database: Path = Path("/var/lib/gridflex/gridflex.sqlite3")
    """the SQLite file of events, audit and outbox"""
    metrics_port: int | None = Field(default=9464, ge=1, le=65535)
    """Prometheus /metrics; null: not served"""
    metrics_host: str = Field(
        default="127.0.0.1",
        description="where /metrics listens: loopback unless Prometheus scrapes from elsewhere "
        "(then the site's address, behind its firewall)",
    )
    audit_retention_days: float | None = Field(
        default=400, gt=0, description="audit rows older than this are deleted (daily); "
        "null keeps them for ever. Settlement disputes reach back about a year.",
    )  # fmt: skip
    status_page_port: int | None = Field(default=None, ge=1, le=65535)
    """a read-only status page (load, events, devices needing attention, the latest decision's
    reasons) on this port; null: not served"""
    status_page_host: str = "127.0.0.1"
    """where the status page listens: loopback; reach it over SSH (ssh -L) rather than opening it
    to the site's network, since it has no login"""
    shutdown_posture: Literal["hold", "restore"] = "hold"
    """on stop: hold devices as they are, or restore them to running"""
    verify_timeout_s: float = Field(default=10, gt=0, le=600)
    """a device that has not reached its setpoint this long after its settle time is not
    obeying"""
    restore_batch_size: int = Field(default=50, ge=1)
    """after a restart or an event's end, start this many devices at once"""
    restore_batch_interval_s: float = Field(default=5, ge=0, le=600)
    """and wait this long between batches"""
    ramp_window_s: float = Field(default=10, ge=0, le=600)
    """after a dispatch asks for less, the site has this long to get there: cycles over the
    ceiling within it are counted as ramp, not as violations, and `active` may be sent"""


class SiteMeterConfig(Strict):
    """The point-of-interconnection (revenue) meter: what the site draws from the grid, read on
    the device cadence. With it, compliance and every ack are judged on it, not on the sum of
    device readings, and that sum is checked against it every cycle."""

    driver: ModbusDriverConfig
    """a read-only power analyser profile (three_phase_meter, siemens_pac3200)"""
    tolerance_kw: float = Field(default=5.0, ge=0, le=100_000)
    """how far the sum of device readings may be from the meter before it is an alarm ..."""
    tolerance_pct: float = Field(default=3.0, ge=0, le=100)
    """... or this share of the meter's reading, whichever is larger"""
    stale_after_s: float = Field(default=10.0, gt=0, le=3600)
    """a reading older than this is not the judge: the device readings are, and acks say so"""

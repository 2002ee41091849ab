"""The fleet's bus: NATS JetStream through nats-py, on the site's leaf node and on the hub.

Streams and subjects (docs/fleet.md), `<p>` the subject prefix:

  on each site (its own JetStream domain, on its own leaf node):
    GF_OUT   <p>.<site>.out.>       what the site publishes: acks, telemetry (its own writes)
  on the hub (domain `hub`):
    GF_FLEET_CMD  <p>.cmd.>         the hub's commands, one subject per site; each site reads
                                    its own with a durable consumer `gridflex-<site>`
    GF_FLEET_IN   sourced from every site's GF_OUT

A site writes to a stream on its own server only, so a write succeeds while the link to the hub
is cut; the hub's sourcing resumes where it stopped once the link heals (JetStream keeps the
position), so what was written meanwhile arrives, in order; the server retries a source on a
backoff of up to 2 minutes, so the hub reads a site's latest state directly across the link
too. A site's commands wait in the hub's stream while its link is down; its consumer reads them
as soon as the link is back. Each write carries a message id (`Nats-Msg-Id`): the same write
sent again within the stream's duplicate window is stored once.

nats-py's errors are translated here into FleetBusError; the client reconnects by itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    ExternalStream,
    KeyValueConfig,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import BucketNotFoundError, NoKeysError
from nats.js.errors import Error as JetStreamError

__all__ = [
    "DUPLICATE_WINDOW_S", "FLEET_CMD_STREAM", "FLEET_IN_STREAM", "OUT_STREAM",
    "BusAddress", "FleetBusError", "NatsBus", "command_subject", "out_subject",
]  # fmt: skip

log = logging.getLogger("gridflex.fleet.bus")

OUT_STREAM = "GF_OUT"
FLEET_CMD_STREAM, FLEET_IN_STREAM = "GF_FLEET_CMD", "GF_FLEET_IN"
DUPLICATE_WINDOW_S = 24 * 3600.0  # a write sent again within a day is stored once
_CONSUMER = "gridflex"
# a command delivered just as the link drops is delivered again after this (the site acks
# within a cycle of taking it)
_ACK_WAIT_S = 10.0
_TIMEOUT_S = 5.0
_NOT_FOUND = 404  # JetStream's API error code for a message that is not there


class FleetBusError(Exception):
    """The bus refused or did not answer (the text says which and why)."""


def out_subject(prefix: str, site: str, topic: str) -> str:
    """Where the site publishes what it would publish on MQTT as `topic` ("dispatch/ack")."""
    return f"{prefix}.{site}.out.{topic.replace('/', '.')}"


def command_subject(prefix: str, site: str) -> str:
    return f"{prefix}.cmd.{site}"


@dataclass(frozen=True, slots=True)
class BusAddress:
    """A NATS server and how to log in to it."""

    url: str
    user: str | None = None
    password: str | None = None
    creds_file: Path | None = None
    ca_file: Path | None = None
    name: str = "gridflex"


class NatsBus:
    """One connection to one NATS server, with its JetStream."""

    def __init__(self, address: BusAddress) -> None:
        self._address = address
        self._nc: Client | None = None
        self._commands: Any = None  # the pull subscription, once bound
        self._on_reconnect: list[Callable[[], None]] = []

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self) -> None:
        a = self._address
        options: dict[str, Any] = {
            "name": a.name, "connect_timeout": _TIMEOUT_S, "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1.0, "allow_reconnect": True,
            "disconnected_cb": self._disconnected, "reconnected_cb": self._reconnected_cb,
        }  # fmt: skip
        if a.user is not None:
            options |= {"user": a.user, "password": a.password}
        if a.creds_file is not None:
            options["user_credentials"] = str(a.creds_file)
        if a.ca_file is not None:
            import ssl  # noqa: PLC0415 - only for a tls:// leaf node

            options["tls"] = ssl.create_default_context(cafile=str(a.ca_file))
        try:
            self._nc = await nats.connect(a.url, **options)
        except (NatsError, OSError, TimeoutError) as exc:
            raise FleetBusError(f"cannot reach the NATS server at {a.url}: {exc}") from exc

    async def _disconnected(self) -> None:
        log.warning("fleet bus: disconnected from %s; reconnecting", self._address.url)

    async def _reconnected_cb(self) -> None:
        log.info("fleet bus: connected again to %s", self._address.url)
        for callback in self._on_reconnect:
            callback()

    def when_reconnected(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every reconnection (not the first connection)."""
        self._on_reconnect.append(callback)

    def _js(self, domain: str | None = None, timeout_s: float = _TIMEOUT_S) -> Any:
        if self._nc is None:
            raise FleetBusError("the fleet bus is not connected")
        if domain:
            return self._nc.jetstream(domain=domain, timeout=timeout_s)
        return self._nc.jetstream(timeout=timeout_s)

    # -- streams ---------------------------------------------------------------------------
    async def ensure_site(self, *, prefix: str, site: str, out_max_bytes: int) -> None:
        """The site's stream on its own server (created, or updated to this shape)."""
        await self._ensure(StreamConfig(
            name=OUT_STREAM, subjects=[f"{prefix}.{site}.out.>"], max_bytes=out_max_bytes,
            discard=DiscardPolicy.OLD, duplicate_window=DUPLICATE_WINDOW_S,
        ))  # fmt: skip

    async def ensure_hub(self, *, prefix: str, site_domains: Sequence[str]) -> None:
        """The hub's command stream, and its inbound stream sourcing every site's GF_OUT."""
        await self._ensure(StreamConfig(name=FLEET_CMD_STREAM, subjects=[f"{prefix}.cmd.>"],
                                        duplicate_window=DUPLICATE_WINDOW_S))  # fmt: skip
        sources = [StreamSource(name=OUT_STREAM, external=ExternalStream(api=f"$JS.{d}.API"))
                   for d in site_domains]  # fmt: skip
        await self._ensure(StreamConfig(name=FLEET_IN_STREAM, sources=sources,
                                        duplicate_window=DUPLICATE_WINDOW_S))  # fmt: skip

    async def _ensure(self, config: StreamConfig) -> None:
        js = self._js()
        try:
            try:
                await js.add_stream(config)
            except JetStreamError as exc:
                if "already in use" not in str(exc):
                    raise
                await js.update_stream(config)
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise FleetBusError(f"stream {config.name}: {exc}") from exc

    # -- writing and reading ---------------------------------------------------------------
    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> int:
        """Store one message in the stream of `subject`; returns its stream sequence (a copy
        within the duplicate window returns the first's)."""
        try:
            ack = await self._js().publish(subject, payload, timeout=_TIMEOUT_S,
                                           headers={"Nats-Msg-Id": msg_id})  # fmt: skip
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise FleetBusError(f"publish on {subject}: {exc}") from exc
        return int(ack.seq)

    async def fetch_commands(self, *, prefix: str, site: str, hub_domain: str, batch: int = 16,
                             timeout_s: float = 1.0) -> list[Msg]:  # fmt: skip
        """The site's next commands, read across the leaf link from the hub's GF_FLEET_CMD by
        the site's durable consumer there (filtered to its subject; what was not acked is
        delivered again, after a restart too); [] when none came within `timeout_s`, or the
        link is down (the commands wait in the hub's stream)."""
        if self._commands is None:
            try:
                self._commands = await self._js(hub_domain).pull_subscribe(
                    command_subject(prefix, site), durable=f"{_CONSUMER}-{site}",
                    stream=FLEET_CMD_STREAM,
                    config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=_ACK_WAIT_S),
                )  # fmt: skip
            except (NatsError, JetStreamError, TimeoutError) as exc:
                raise FleetBusError(f"consumer on the hub's {FLEET_CMD_STREAM}: {exc}") from exc
        try:
            messages: list[Msg] = await self._commands.fetch(batch, timeout=timeout_s)
        except (TimeoutError, NoRespondersError):  # nothing new, or the link is down
            return []
        except (NatsError, JetStreamError) as exc:
            raise FleetBusError(f"fetch from the hub's {FLEET_CMD_STREAM}: {exc}") from exc
        return messages

    async def stream_messages(self, stream: str, subject: str | None = None) -> list[Msg]:
        """Every message stored in `stream` (on this server's domain), oldest first: for the
        hub's views and for tests. Read in batches through an ephemeral consumer."""
        js = self._js()
        out: list[Msg] = []
        try:
            info = await js.stream_info(stream)
            if info.state.messages == 0:
                return out
            reader = await js.pull_subscribe(
                subject or "", stream=stream,
                config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0),
            )  # fmt: skip
            try:
                while True:
                    try:
                        batch: list[Msg] = await reader.fetch(512, timeout=1.0)
                    except TimeoutError:
                        break
                    out += batch
                    if not batch or batch[-1].metadata.num_pending == 0:
                        break
            finally:
                with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                    await reader.unsubscribe()
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise FleetBusError(f"reading {stream}: {exc}") from exc
        return out

    # -- the hub's state (a key-value bucket) ----------------------------------------------
    async def put_state(self, bucket: str, key: str, value: bytes) -> None:
        """Write `key` in the key-value bucket `bucket` (created on first use, latest only)."""
        try:
            kv = await self._bucket(bucket)
            await kv.put(key, value)
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise FleetBusError(f"writing {bucket}.{key}: {exc}") from exc

    async def states(self, bucket: str) -> dict[str, bytes]:
        """Every key of `bucket` with its value ({} when the bucket does not exist yet)."""
        js = self._js()
        try:
            try:
                kv = await js.key_value(bucket)
            except BucketNotFoundError:
                return {}
            try:
                keys = await kv.keys()
            except NoKeysError:
                return {}
            return {key: (await kv.get(key)).value or b"" for key in keys}
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise FleetBusError(f"reading {bucket}: {exc}") from exc

    async def _bucket(self, bucket: str) -> Any:
        js = self._js()
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            return await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))

    async def last_message(self, stream: str, subject: str, *, domain: str | None = None,
                           timeout_s: float = _TIMEOUT_S) -> bytes | None:  # fmt: skip
        """The last message of `subject` in `stream` (of JetStream `domain`: another server's,
        across the leaf link), or None when it holds none."""
        try:
            raw = await self._js(domain, timeout_s).get_last_msg(stream, subject)
        except JetStreamError as exc:
            if "no message found" in str(exc).lower() or getattr(exc, "code", None) == _NOT_FOUND:
                return None
            raise FleetBusError(f"reading {stream}: {exc}") from exc
        except (NatsError, TimeoutError) as exc:
            raise FleetBusError(f"reading {stream}: {exc}") from exc
        data: bytes | None = raw.data
        return data

    async def sourced_domains(self, stream: str) -> list[str]:
        """The JetStream domains `stream` sources from (the hub's inbound stream: its sites)."""
        try:
            info = await self._js().stream_info(stream)
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise FleetBusError(f"reading {stream}: {exc}") from exc
        domains = []
        for source in info.config.sources or []:
            api = source.external.api if source.external is not None else ""
            if api.startswith("$JS.") and api.endswith(".API"):
                domains.append(api[len("$JS.") : -len(".API")])
        return domains

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            # close, not drain: a pending fetch would hold a drain for its whole timeout, and
            # every write was confirmed already (acks) or is superseded state (telemetry)
            with contextlib.suppress(NatsError, TimeoutError):
                await self._nc.close()

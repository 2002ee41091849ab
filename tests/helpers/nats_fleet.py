"""Real NATS servers on 127.0.0.1 for the fleet tests: a hub with JetStream in domain `hub`,
leaf servers with JetStream in their own domains, each leaf's link to the hub through a TCP
proxy a test can cut and heal (a site's WAN link), and the hub's side of a command."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from adapters.transport.nats_bus import NatsBus
from agent.app.fleet_hub import publish_command
from agent.config import SiteConfig
from agent.config.load import parse_config
from agent.service.fleet_commands import signed_command
from tests.helpers.peers import free_port

__all__ = [
    "KEY", "CutLink", "NatsServer", "command", "fleet_site", "fleet_site_text",
    "nats_server_binary", "send_command",
]  # fmt: skip

KEY = b"k" * 32  # the hub's key hub-1, as every test site knows it
_SITE = """
site: {{id: {site}}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: {value}}}}}
  controls: {{priority: critical}}
devices:
  - {{id: m, kind: miner, class: miners, count: 10, rated_kw: 10,
     driver: {{type: simulated, stuck: {stuck}}}}}
  - {{id: c, kind: other, class: controls, rated_kw: 5, driver: {{type: simulated}}}}
prices: {{source: none}}
policy: {{stale_posture: run_all, min_dwell_s: 0}}
service: {{database: "{db}", metrics_port: null, cycle_s: {cycle_s}}}
fleet: {{url: "{url}", command_keys: {{hub-1: "{key}"}}}}
"""


def fleet_site_text(tmp_path: Path, site_id: str, url: str, value_usd_per_mwh: float = 90.0,
                    cycle_s: float = 0.25, *, stuck: bool = False) -> str:  # fmt: skip
    """A 105 kW site on the fleet, as its site file: ten 10 kW miners (interruptible, worth
    `value_usd_per_mwh`; `stuck`: they take every command and keep drawing full power) and
    5 kW of controls."""
    return _SITE.format(site=site_id, db=tmp_path / f"{site_id}.sqlite3", url=url,
                        key=KEY.decode(), value=value_usd_per_mwh, cycle_s=cycle_s,
                        stuck=str(stuck).lower())  # fmt: skip


def fleet_site(tmp_path: Path, site_id: str, url: str, *, stuck: bool = False) -> SiteConfig:
    """fleet_site_text's site, parsed."""
    return parse_config(fleet_site_text(tmp_path, site_id, url, stuck=stuck), env={})


def nats_server_binary() -> str | None:
    """nats-server from the `fleet` extra (beside this interpreter), else on the PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    return str(beside) if beside.exists() else shutil.which("nats-server")


@dataclass
class NatsServer:
    """One nats-server with JetStream in `domain`; a hub listens for leaf nodes, a leaf
    connects to `leaf_remote_port`."""

    name: str
    domain: str
    store: Path
    leaf_remote_port: int | None = None  # a leaf: the hub's leaf port (or a proxy to it)
    port: int = field(default_factory=free_port)
    leaf_port: int = field(default_factory=free_port)  # a hub: where leaf nodes connect
    process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        binary = nats_server_binary()
        assert binary is not None, "nats-server not installed (pip install 'gridflex[fleet]')"
        self.store.mkdir(parents=True, exist_ok=True)
        lines = [f"listen: 127.0.0.1:{self.port}", f"server_name: {self.name}",
                 f'jetstream {{ store_dir: "{self.store}", domain: {self.domain} }}']  # fmt: skip
        if self.leaf_remote_port is None:
            # no_advertise: a leaf reconnects only where it was told (through the relay), never
            # to the address the hub would advertise around it
            lines.append(f"leafnodes {{ listen: 127.0.0.1:{self.leaf_port}, no_advertise: true }}")
        else:
            lines.append("leafnodes { reconnect: 1, remotes: [ { url: "
                         f'"nats-leaf://127.0.0.1:{self.leaf_remote_port}" }} ] }}')  # fmt: skip
        conf = self.store / "server.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._log = (self.store / "server.log").open("wb")
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=self._log,
                                        stderr=subprocess.STDOUT)  # fmt: skip
        _wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()


def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


class CutLink:
    """A TCP relay from `port` to `target_port` that a test can cut (every connection closed,
    new ones refused) and heal: a site's link to the hub."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._cut = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.1)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        self._server.close()
        self._thread.join(timeout=2)


def command(site_id: str, seq: int, key_id: str, key: bytes, *, issued_at: datetime,
            expires_at: datetime, dispatch: dict[str, Any]) -> bytes:  # fmt: skip
    """A fleet command as the hub signs it, as the bytes it sends."""
    body = signed_command(site_id, seq, key_id, key, issued_at=issued_at, expires_at=expires_at,
                          dispatch=dispatch)  # fmt: skip
    return json.dumps(body).encode()


async def send_command(bus: NatsBus, site_id: str, seq: int, *, issued_at: datetime,
                       expires_at: datetime, dispatch: dict[str, Any]) -> None:  # fmt: skip
    """A command signed for `site_id` under the hub's key hub-1, sent as the hub sends it."""
    body = signed_command(site_id, seq, "hub-1", KEY, issued_at=issued_at, expires_at=expires_at,
                          dispatch=dispatch)  # fmt: skip
    await publish_command(bus, body)

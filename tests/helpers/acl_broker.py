"""A Mosquitto of the test's own with the broker ACL exactly as docs/security.md documents it
(read from the document, its example names replaced), users with passwords, no anonymous."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.helpers.peers import MOSQUITTO, Broker, free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
# the document's example names
DOC_PREFIX, DOC_GROUP, DOC_EDGE, DOC_HOST = (
    "gridflex/west-50mw",
    "gridflex",
    "west-50mw",
    "scada-host",
)
USERS = ("gridflex", "qse", "scada")


def documented_acl() -> str:
    """The ACL block of docs/security.md, as written."""
    text = DOC.read_text()
    section = text.split("## The broker's ACL", 1)[1]
    match = re.search(r"```\n(.*?)```", section, re.S)
    assert match is not None, "docs/security.md has no ACL block"
    return match.group(1)


def password(user: str) -> str:
    return f"pw-{user}-of-the-test"


def start_acl_broker(tmp: Path, site_id: str, *, group: str, host_id: str,
                     nodes: tuple[str, ...] = ()) -> Broker:  # fmt: skip
    """The documented ACL for site `site_id` (prefix gridflex/<site id>, Sparkplug edge node
    <site id> in `group`, primary host `host_id`); the users of the ACL and each node's."""
    assert MOSQUITTO is not None
    acl = (documented_acl()
           .replace(DOC_PREFIX, f"gridflex/{site_id}")
           .replace(f"spBv1.0/{DOC_GROUP}/", f"spBv1.0/{group}/")
           .replace(f"/{DOC_EDGE}", f"/{site_id}")
           .replace(f"STATE/{DOC_HOST}", f"STATE/{host_id}"))  # fmt: skip
    (tmp / "acl").write_text(acl)
    passwords = tmp / "passwords"
    passwords.write_text("")
    for user in (*USERS, *nodes):
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password(user)],
                       check=True, capture_output=True)  # fmt: skip
    data = tmp / "acl-broker-data"
    data.mkdir(exist_ok=True)
    port = free_port()
    user = "user root\n" if os.geteuid() == 0 else ""
    config = tmp / "acl-mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n{user}allow_anonymous false\n"
        f"password_file {passwords}\nacl_file {tmp / 'acl'}\n"
        f"persistence true\npersistence_location {data}/\nautosave_interval 1\n"
        "max_queued_messages 100000\n"
    )
    broker = Broker(host="127.0.0.1", port=port, config_path=config)
    broker.start()
    return broker
